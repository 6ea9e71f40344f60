"""The deploy record (``deploy-TARGET.json``, schema ``edgepipe.deploy/1``) as a typed model, for the parts that
``compare`` judges by.

A record carries much more (it is open: extra fields are kept); what is declared here must be there. A field
that may be unknown on some boards (no cpufreq governor, no temperature sensor) is declared ``X | None`` without
a default: it must be present, and null says "unknown". So a record written by another version, or a field
renamed in one place and not the other, fails with the field's name instead of comparing None with None.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgepipe.errors import ConfigError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Board(_Open):
    machine: str
    cpu_model: str | None
    cores: int | None
    governor: str | None
    mhz_max: float | None
    mhz_current: float | None
    temperature_c: float | None
    throttling: dict[str, Any] | None
    kernel: str | None
    os: str | None
    python: str | None
    numpy: str | None
    emulated: bool


class Runtime(_Open):
    name: str
    version: str | None
    threads: int
    xnnpack: bool


class Timing(_Open):
    latency_ms: dict[str, float]
    samples_ms: list[float]
    repeats: list[dict[str, Any]] | None
    baseline: dict[str, Any] | None = None  # only when deployed with --baseline


class Memory(_Open):
    vmhwm_kb: dict[str, int | None]


class Device(_Open):
    agent_version: str
    board: Board
    runtime: Runtime
    timing: Timing
    memory: Memory
    accuracy: dict[str, Any] | None = None  # absent when deployed without evaluation data


class ModelPart(_Open):
    sha256: str
    bytes: int
    model: str


class TargetPart(_Open):
    name: str
    threads: int
    xnnpack: bool
    runtime: str


class MeasurePart(_Open):
    runs: int
    min_seconds: float
    repeats: int


class AgentPart(_Open):
    version: str
    sha256: str


class Provenance(_Open):
    tools: dict[str, Any]
    agent: AgentPart
    optimize: dict[str, Any] | None


class DeployRecord(_Open):
    """A passed deploy: what a verdict can be built from."""

    schema_: Literal["edgepipe.deploy/1"]
    status: Literal["passed"]
    target: TargetPart
    measure: MeasurePart
    model: ModelPart
    provenance: Provenance
    device: Device
    baseline: dict[str, Any] | None = None  # only when deployed with --baseline

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @classmethod
    def read(cls, record: dict[str, Any], source: str) -> DeployRecord:
        """Validate ``record``; ConfigError names ``source`` and the first missing or malformed field."""
        if record.get("status") != "passed":
            error = record.get("error") or {}
            raise ConfigError(
                f"{source} is a {record.get('status', 'unknown')} deploy ({error.get('class')}): nothing to compare",
                hint="compare passed deploys; 'edgepipe history' lists them",
            )
        try:
            return cls.model_validate({**record, "schema_": record.get("schema")})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]).replace("schema_", "schema")
            problem = "missing" if first["type"] == "missing" else first["msg"]
            raise ConfigError(
                f"{source}: not a complete edgepipe.deploy/1 record: {where}: {problem}",
                hint="it was written by another edgepipe version, or edited; deploy again to get a complete record",
            ) from None

    def field(self, path: str) -> Any:
        """``field("device.board.governor")``: a declared field by its dotted path; a path that is not declared
        raises AttributeError (a typo in code must not read as 'unknown on both sides')."""
        value: Any = self
        for part in path.split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        return value
