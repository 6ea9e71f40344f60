"""Targets: validated data describing a board and how to reach it (``targets/*.yaml``).

A target holds no behaviour (labgrid's split): transports use it to connect, ``deploy`` to build the agent's job.
Every string may come from the environment as ``${EDGEPIPE_NAME:-default}``, so one file serves a device farm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Runtime = Literal["auto", "ai_edge_litert", "tflite_runtime", "tensorflow"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeasureSettings(Strict):
    """How the agent measures; per target, since a Pi needs other limits than a workstation."""

    warmup_runs: int = Field(10, ge=0)
    runs: int = Field(200, ge=1, description="timed runs, at least")
    min_seconds: float = Field(1.0, ge=0, description="keep timing until this much time has passed too")
    max_runs: int = Field(20000, ge=1, description="never more timed runs (bounds the result's size)")
    time_limit_s: float = Field(300, gt=0, description="wall-time limit of the sandboxed model process")
    memory_limit_mb: int = Field(2048, ge=64, description="address-space limit of the sandboxed model process")
    eval_samples: int | None = Field(None, ge=1, description="evaluate on the first N samples only")
    accuracy_tolerance: float = Field(
        0.5, ge=0, description="largest difference, in accuracy points, between the board and the host"
    )


class AgentInstall(Strict):
    """What ``edgepipe agent install`` puts in the board's virtual environment (from the package registry)."""

    python: str = Field("python3", description="the board's own interpreter, used to create the venv")
    packages: list[str] = Field(default_factory=lambda: ["numpy", "ai-edge-litert"])
    index_url: str | None = None


class Target(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    transport: Literal["local", "ssh"]
    host: str | None = None
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key: Path | None = Field(None, description="private key file; none means the SSH agent (use_agent) only")
    use_agent: bool = False
    known_hosts: Path = Path("~/.ssh/known_hosts")
    trust_on_first_use: bool = Field(False, description="accept AND record an unknown host key (never a changed one)")
    connect_timeout_s: float = Field(10, gt=0)
    connect_attempts: int = Field(3, ge=1)
    deadline_s: float = Field(900, gt=0, description="overall deadline of one agent job; the command dies with it")
    workdir: str = Field(".cache/edgepipe", description="edgepipe's directory on the board (relative: to home)")
    python: str | None = Field(
        None,
        description="interpreter that runs the agent; default: edgepipe's own (local) or the venv of agent install",
    )
    runtime: Runtime = "auto"
    threads: int = Field(1, ge=1)
    xnnpack: bool = True
    arch: str | None = Field(None, description="expected platform.machine() on the board, e.g. aarch64")
    emulated: bool = False
    peak_gops: float | None = Field(None, gt=0, description="peak int8 throughput, for roofline estimates")
    memory_bandwidth_gbs: float | None = Field(None, gt=0)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    agent_install: AgentInstall = Field(default_factory=AgentInstall)

    @field_validator("key", "known_hosts")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("key", "python", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _ssh_needs_a_host(self) -> Target:
        if self.transport == "ssh":
            missing = [f for f in ("host", "user") if not getattr(self, f)]
            if missing:
                raise ValueError(f"an ssh target needs {' and '.join(missing)}")
            if self.key is None and not self.use_agent:
                raise ValueError("an ssh target needs a key file, or use_agent: true")
        return self

    def agent_python(self, host_python: str) -> str:
        """The interpreter command that runs the agent on the board."""
        if self.python:
            return self.python
        if self.transport == "local":
            return host_python
        return f"{self.workdir}/venv/bin/python"

    def where(self) -> str:
        return "this machine" if self.transport == "local" else f"{self.user}@{self.host}:{self.port}"
