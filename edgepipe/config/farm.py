"""A farm file: the boards of a lab, grouped into pools of interchangeable boards (``farms/*.yaml``).

A pool is a board type (rpi4, jetson-nano, ...): any of its boards may measure any job sent to the pool, so a job
whose board fails is retried on another board of the same pool. Each board is an existing target, named or given
as a file (relative to the farm file). Like targets, every string may be ``${EDGEPIPE_*}``.

Example::

    name: lab
    pools:
      rpi4:
        boards: [pi-a, pi-b, boards/pi-c.yaml]
        attempts: 3            # an infrastructure failure is retried until a job had this many attempts
        quarantine_after: 2    # consecutive infrastructure failures that take a board out of the run
    lease: {ttl_s: 60, heartbeat_s: 10}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgepipe.config.loading import load_model
from edgepipe.config.target import Target
from edgepipe.errors import ConfigError

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pool(Strict):
    boards: list[str] = Field(min_length=1, description="target names or target files of interchangeable boards")
    attempts: int = Field(3, ge=1, le=20, description="attempts a job gets when the infrastructure fails")
    quarantine_after: int = Field(
        2, ge=1, le=100, description="consecutive infrastructure failures after which a board is quarantined"
    )
    health_check: bool = Field(True, description="check a board before its first job and after each failure")


class LeaseSettings(Strict):
    ttl_s: float = Field(60, ge=5, le=3600, description="a lease not renewed for this long has expired")
    heartbeat_s: float = Field(10, gt=0, description="how often a lease is renewed while its job runs")

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> LeaseSettings:
        if self.heartbeat_s * 2 > self.ttl_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s:g}) must be at most half of ttl_s ({self.ttl_s:g})")
        return self


class FarmFile(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    pools: dict[str, Pool] = Field(min_length=1)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)

    @model_validator(mode="after")
    def _pool_names(self) -> FarmFile:
        import re

        for name in self.pools:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"pool name {name!r}: use lower-case letters, digits, '.', '_' and '-'")
        return self


@dataclass(frozen=True)
class Board:
    """One board of the farm: its target (the name is the board's identity in leases and results) and pool."""

    name: str
    pool: str
    target: Target


@dataclass(frozen=True)
class Farm:
    file: Path
    spec: FarmFile
    boards: dict[str, Board]

    @property
    def name(self) -> str:
        return self.spec.name

    def pool_boards(self, pool: str) -> list[Board]:
        return [board for board in self.boards.values() if board.pool == pool]


def load_farm(path: Path) -> Farm:
    """Read and validate a farm file, and load every board's target: a wrong board is named with its place in
    the file (``lab.yaml: pools.rpi4.boards[1]: unknown target 'pi-x'``) before anything runs."""
    from edgepipe.targets import load_target

    spec = load_model(path, FarmFile)
    boards: dict[str, Board] = {}
    for pool_name, pool in spec.pools.items():
        for index, entry in enumerate(pool.boards):
            where = f"pools.{pool_name}.boards[{index}]"
            file = Path(entry)
            if file.suffix in (".yaml", ".yml") and not file.is_absolute():
                entry = str(path.parent / file)
            try:
                target = load_target(entry)
            except ConfigError as exc:
                raise ConfigError.at(str(path), where, exc.message, hint=exc.hint) from None
            if target.name in boards:
                other = boards[target.name].pool
                raise ConfigError.at(
                    str(path),
                    where,
                    f"board {target.name!r} is listed twice (also in pool {other!r})",
                    hint="a board belongs to one pool; leases and results know it by its target name",
                )
            boards[target.name] = Board(target.name, pool_name, target)
    return Farm(path, spec, boards)
