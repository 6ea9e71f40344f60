"""A farm file: the boards of a lab, grouped into pools of interchangeable boards (``farms/*.yaml``).

A pool is a board type (rpi4, jetson-nano, ...): any of its boards may measure any job sent to the pool, so a job
whose board fails is retried on another board of the same pool. Each board is an existing target, named or given
as a file (relative to the farm file), or a pool is the labgrid places whose tags match (``labgrid:``; the places
are found on the coordinator when the run starts, see ``edgepipe.farm.labgrid``). Like targets, every string may
be ``${EDGEPIPE_*}``.

Example::

    name: lab
    pools:
      rpi4:
        boards: [pi-a, pi-b, boards/pi-c.yaml]
        attempts: 3            # an infrastructure failure is retried until a job had this many attempts
        quarantine_after: 2    # consecutive infrastructure failures that take a board out of the run
      rpi5:                    # the labgrid places tagged board=rpi5; each place's NetworkService gives the
        labgrid:               # address, port and user that the target's SSH settings are completed with
          tags: {board: rpi5}
          target: rpi5
    labgrid: {coordinator: "lab-server:20408"}   # default: $LG_COORDINATOR, as labgrid-client
    lease: {ttl_s: 60, heartbeat_s: 10}
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgepipe.config.loading import load_model
from edgepipe.config.target import Target
from edgepipe.errors import ConfigError

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


TAG_PATTERN = r"^[a-z][a-z0-9_]+$"  # labgrid's TAG_KEY


def _all_match(names: Iterable[str], pattern: str, problem: str) -> None:
    for name in names:
        if not re.match(pattern, name):
            raise ValueError(problem.format(name))


class LabgridPool(Strict):
    """A pool of labgrid places: every place whose tags include ``tags`` is a board of the pool."""

    tags: dict[str, str] = Field(min_length=1, description="tags a place must have (labgrid-client set-tags)")
    target: str = Field(
        description="the SSH target (name or file) whose settings every place uses; host, port and user come from "
        "the place's NetworkService. '{place}' in its workdir becomes the place's name"
    )
    resource: str | None = Field(None, description="the NetworkService's name, when a place has several")

    @model_validator(mode="after")
    def _tag_keys(self) -> LabgridPool:
        _all_match(self.tags, TAG_PATTERN, "labgrid tag {!r}: a lower-case letter, then letters, digits or '_'")
        return self


class LabgridSettings(Strict):
    coordinator: str | None = Field(None, description="HOST[:PORT] of labgrid-coordinator; default $LG_COORDINATOR")
    reconnect_s: float = Field(
        120.0, ge=0, le=3600, description="how long a lost coordinator is waited for before the boards fail"
    )


class Pool(Strict):
    boards: list[str] = Field(
        default_factory=list, description="target names or target files of interchangeable boards"
    )
    labgrid: LabgridPool | None = Field(None, description="instead of boards: the labgrid places matching tags")
    attempts: int = Field(3, ge=1, le=20, description="attempts a job gets when the infrastructure fails")
    quarantine_after: int = Field(
        2, ge=1, le=100, description="consecutive infrastructure failures after which a board is quarantined"
    )
    health_check: bool = Field(True, description="check a board before its first job and after each failure")

    @model_validator(mode="after")
    def _boards_or_labgrid(self) -> Pool:
        if bool(self.boards) == (self.labgrid is not None):
            raise ValueError("a pool has either 'boards' (targets) or 'labgrid' (places matching tags), not both")
        return self


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
    labgrid: LabgridSettings = Field(default_factory=LabgridSettings)

    @model_validator(mode="after")
    def _pool_names(self) -> FarmFile:
        _all_match(self.pools, NAME_PATTERN, "pool name {!r}: use lower-case letters, digits, '.', '_' and '-'")
        return self


@dataclass(frozen=True)
class Board:
    """One board of the farm: its target (the name is the board's identity in leases and results) and pool.
    A labgrid place's board has the place's name and its pool's target as ``target``, still without the address:
    that is read from the place's NetworkService once the place is acquired."""

    name: str
    pool: str
    target: Target
    place: str | None = None  # the labgrid place


@dataclass(frozen=True)
class Farm:
    file: Path
    spec: FarmFile
    boards: dict[str, Board]
    templates: dict[str, Target]  # labgrid pools: the target each of their places completes

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def coordinator(self) -> str | None:
        """labgrid-coordinator's address, when a pool is made of labgrid places."""
        if not self.templates:
            return None
        return self.spec.labgrid.coordinator or os.environ.get("LG_COORDINATOR") or None

    def with_places(self, places: dict[str, list[str]]) -> Farm:
        """This farm with the labgrid places found on the coordinator (pool -> place names) as boards."""
        boards = dict(self.boards)
        for pool, names in places.items():
            for place in names:
                if place in boards:
                    other = boards[place].pool
                    raise ConfigError(
                        f"{self.file}: labgrid place {place!r} matches pool {pool!r} and is also a board of pool "
                        f"{other!r}",
                        hint="a board belongs to one pool: give the pools' labgrid tags that tell them apart",
                    )
                boards[place] = Board(place, pool, self.templates[pool], place=place)
        return Farm(self.file, self.spec, boards, self.templates)

    def pool_boards(self, pool: str) -> list[Board]:
        return [board for board in self.boards.values() if board.pool == pool]


def load_farm(path: Path) -> Farm:
    """Read and validate a farm file, and load every board's target: a wrong board is named with its place in
    the file (``lab.yaml: pools.rpi4.boards[1]: unknown target 'pi-x'``) before anything runs."""
    spec = load_model(path, FarmFile)
    boards: dict[str, Board] = {}
    templates: dict[str, Target] = {}
    for pool_name, pool in spec.pools.items():
        if pool.labgrid is not None:
            templates[pool_name] = _template(path, pool_name, pool.labgrid.target)
        for index, entry in enumerate(pool.boards):
            where = f"pools.{pool_name}.boards[{index}]"
            target = _target(path, where, entry)
            if target.name in boards:
                other = boards[target.name].pool
                raise ConfigError.at(
                    str(path),
                    where,
                    f"board {target.name!r} is listed twice (also in pool {other!r})",
                    hint="a board belongs to one pool; leases and results know it by its target name",
                )
            boards[target.name] = Board(target.name, pool_name, target)
    farm = Farm(path, spec, boards, templates)
    if templates and not farm.coordinator:
        raise ConfigError.at(
            str(path), "labgrid.coordinator", "no labgrid coordinator given, and LG_COORDINATOR is not set",
            hint="set labgrid: {coordinator: HOST:PORT} in the farm file, or export LG_COORDINATOR (as labgrid-client)",
        )  # fmt: skip
    return farm


def _target(path: Path, where: str, entry: str) -> Target:
    """A target named in the farm file (a file relative to it, or a name), its errors placed at ``where``."""
    from edgepipe.targets import load_target

    file = Path(entry)
    if file.suffix in (".yaml", ".yml") and not file.is_absolute():
        entry = str(path.parent / file)
    try:
        return load_target(entry)
    except ConfigError as exc:
        raise ConfigError.at(str(path), where, exc.message, hint=exc.hint) from None


def _template(path: Path, pool: str, entry: str) -> Target:
    where = f"pools.{pool}.labgrid.target"
    target = _target(path, where, entry)
    if target.transport != "ssh":
        raise ConfigError.at(
            str(path), where, f"target {target.name!r} uses transport {target.transport!r}",
            hint="a labgrid place is reached over SSH at its NetworkService: name an ssh target",
        )  # fmt: skip
    return target
