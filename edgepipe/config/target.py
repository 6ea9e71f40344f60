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
    repeats: int = Field(
        3, ge=1, description="separate measuring processes; a regression verdict needs several (see compare)"
    )
    time_limit_s: float = Field(300, gt=0, description="wall-time limit of the sandboxed model process")
    memory_limit_mb: int = Field(2048, ge=64, description="address-space limit of the sandboxed model process")
    eval_samples: int | None = Field(None, ge=1, description="evaluate on the first N samples only")
    profile_seconds: float = Field(
        5.0, ge=0, description="deploy --profile: time the model's prefixes at least this long (longer: finer)"
    )
    accuracy_tolerance: float = Field(
        0.5, ge=0, description="largest difference, in accuracy points, between the board and the host"
    )
    error_tolerance: float = Field(
        0.01,
        ge=0,
        description="largest relative difference of the error (regression, reconstruction) between board and host",
    )


class AgentInstall(Strict):
    """What ``edgepipe agent install`` puts in the board's virtual environment (from the package registry)."""

    python: str = Field("python3", description="the board's own interpreter, used to create the venv")
    packages: list[str] = Field(
        default_factory=lambda: ["numpy<2.3", "ai-edge-litert==2.3.0"],
        description="pinned like the host's runtime (pyproject's device extra), so board and host compute alike",
    )
    index_url: str | None = None


class EmulatorImage(Strict):
    """An emulated board: a Debian userland of another architecture, run with QEMU user-mode emulation.

    Built by ``edgepipe emulator build IMAGE`` from the machine's own Debian mirror (its apt sources, or
    ``mirror``) and the package registry: Debian packages are unpacked, never installed with scripts, and the
    Python packages are installed by the host's pip for the image's platform, so building needs no root and
    no binfmt service.
    """

    image: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="name of the built image (edgepipe emulator)")
    debian_arch: str = "arm64"
    suite: str = "bookworm"
    mirror: str | None = Field(None, description="Debian mirror URL; default: the one this machine's apt uses")
    debian_packages: list[str] = Field(default_factory=lambda: ["python3.11-minimal", "libpython3.11-stdlib"])
    python: str = Field("/usr/bin/python3.11", description="the interpreter inside the image")
    python_version: str = "3.11"
    glibc: str = Field("2.36", description="the image's glibc, for choosing manylinux wheels")
    wheel_arch: str = "aarch64"
    python_packages: list[str] = Field(default_factory=lambda: ["numpy<2", "tflite-runtime"])
    qemu: str = Field("qemu-aarch64-static", description="QEMU user-mode emulator (Debian qemu-user-static)")
    cpu: str | None = Field(
        None, description="QEMU CPU model (e.g. cortex-a72): the board's instruction set, so kernels match its"
    )

    @field_validator("mirror", mode="before")
    @classmethod
    def _empty_mirror_is_none(cls, value: object) -> object:
        return None if value == "" else value


class ParitySettings(Strict):
    """How far an emulated (or any) board's results may stray from the host's before the deploy fails.

    A classifier must give the same answers: top-1 agreement and at most ``max_abs_diff`` integer steps on any
    output value. An answer that changed where the host preferred its own by at most ``2 * max_abs_diff`` steps
    over the board's is a near-tie, which rounding within the tolerance explains (an undertrained model has
    many): it is counted and shown, and does not count against ``min_top1_agreement``.

    A regression or reconstruction model is judged by its error instead: hundreds of output values per sample
    each go through every layer's rounding, and another runtime's kernels may round one of them a step or two
    differently without changing the answer; ``max_error_delta`` bounds the relative change of the
    error (mean absolute or squared) against the host's. Its largest step difference is still recorded.
    """

    max_abs_diff: float = Field(1, ge=0, description="classifiers: largest output difference, in integer steps")
    min_top1_agreement: float = Field(0.99, ge=0, le=1)
    max_error_delta: float = Field(
        0.01, ge=0, description="regression, reconstruction: largest relative change of the error against the host"
    )


class Target(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    transport: Literal["local", "ssh", "qemu"]
    host: str | None = None
    port: int = Field(22, ge=1, le=65535)
    user: str | None = Field(None, description="login on the board; none: your login name here, as ssh does")
    key: Path | None = Field(None, description="private key file; none means the SSH agent (use_agent) only")
    use_agent: bool = False
    known_hosts: Path = Path("~/.ssh/known_hosts")
    trust_on_first_use: bool = Field(False, description="accept AND record an unknown host key (never a changed one)")
    connect_timeout_s: float = Field(10, gt=0)
    connect_attempts: int = Field(3, ge=1)
    link_timeout_s: float = Field(
        30,
        ge=5,
        le=600,
        description="a link silent this long (nothing acknowledged, no keepalive answered) is dead: the deploy "
        "gives up instead of hanging",
    )
    deadline_s: float = Field(900, gt=0, description="overall deadline of one agent job; the command dies with it")
    workdir: str = Field(".cache/edgepipe", description="edgepipe's directory on the board (relative: to home)")
    cache_limit_mb: float | None = Field(
        1024,
        gt=0,
        description="models, data and agents kept on the board: after each deploy the ones used longest ago are "
        "removed until the rest fit (none used in the last hour); null: keep everything",
    )
    python: str | None = Field(
        None,
        description="interpreter that runs the agent; default: edgepipe's own (local) or the venv of agent install",
    )
    runtime: Runtime = "auto"
    threads: int = Field(1, ge=1, le=1024, description="interpreter threads (the agent refuses more than 1024 too)")
    xnnpack: bool = True
    arch: str | None = Field(None, description="expected platform.machine() on the board, e.g. aarch64")
    emulated: bool = False
    emulator: EmulatorImage | None = None
    parity: ParitySettings | None = Field(None, description="fail the deploy when outputs differ from the host's")
    peak_gops: float | None = Field(None, gt=0, description="peak int8 throughput, for roofline estimates")
    memory_bandwidth_gbs: float | None = Field(None, gt=0)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    agent_install: AgentInstall = Field(default_factory=AgentInstall)

    @field_validator("key", "known_hosts")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("key", "python", "user", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("workdir", "python")
    @classmethod
    def _not_an_option(cls, value: str | None) -> str | None:
        """Both end up in argument lists on the board (the interpreter, ``mkdir -p``, the agent's path); a value
        starting with ``-`` would be read there as an option, e.g. ``-cimport os; ...`` by Python."""
        if value is not None and value.lstrip().startswith("-"):
            raise ValueError(f"{value!r} starts with '-', which the board's programs would read as an option")
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _qemu_needs_an_image(self) -> Target:
        if self.transport == "qemu":
            if self.emulator is None:
                raise ValueError("a qemu target needs an emulator section (the image to run)")
            self.emulated = True
        return self

    @model_validator(mode="after")
    def _ssh_needs_a_host(self) -> Target:
        if self.transport == "ssh":
            if not self.host:
                raise ValueError("an ssh target needs host")
            if not self.user:  # like ssh(1): the local login name (Raspberry Pi OS has no default 'pi' any more)
                import getpass

                self.user = getpass.getuser()
            if self.key is None and not self.use_agent:
                raise ValueError("an ssh target needs a key file, or use_agent: true")
        return self

    def agent_python(self, host_python: str) -> str:
        """The interpreter command that runs the agent on the board."""
        if self.python:
            return self.python
        if self.transport == "local":
            return host_python
        if self.emulator is not None:
            return self.emulator.python
        return f"{self.workdir}/venv/bin/python"

    def where(self) -> str:
        if self.transport == "local":
            return "this machine"
        if self.emulator is not None:
            return f"QEMU {self.emulator.wheel_arch} image {self.emulator.image}"
        return f"{self.user}@{self.host}:{self.port}"
