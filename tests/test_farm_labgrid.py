"""``edgepipe farm`` with pools of labgrid places: a real ``labgrid-coordinator`` and ``labgrid-exporter``
publishing a ``NetworkService`` for each board of a lab (OpenSSH's sshd in network namespaces, tests/netns.py),
places made, tagged and locked with ``labgrid-client``, the farm run through the real CLI.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import labgridlab
import netns
import pytest
from farmkit import QUICK, attempts, farm_cli, finish, make_models, wait_for

from edgepipe.farm.store import FarmStore

PLACES = {"pi-a": ("rpi4", 0), "pi-b": ("rpi4", 1), "nano-a": ("jetson", 2)}  # place: (its board tag, lab board)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[netns.LabBoard]]:
    reason = netns.available()
    if reason:
        pytest.fail(f"the farm tests need network namespaces: {reason} (CI runs as root with iproute2)")
    with netns.lab(tmp_path_factory.mktemp("lab"), 3) as boards:
        # One CI key on every board and one known_hosts file, as in a real lab.
        key = boards[0].host.key
        public = key.with_suffix(".pub").read_text()
        for board in boards[1:]:
            (board.host.known_hosts.parent / "authorized_keys").open("a").write(public)
        yield boards


@pytest.fixture(scope="module")
def coordinator(lab: list[netns.LabBoard], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The coordinator with one exporter publishing each board's NetworkService, and a place per board."""
    folder = tmp_path_factory.mktemp("labgrid")
    with labgridlab.coordinator(folder) as address:
        groups = {
            board.name: {"NetworkService": {"address": board.host.address, "port": board.host.port,
                                            "username": board.host.user}}
            for board in lab
        }  # fmt: skip
        with labgridlab.exporter(address, folder, "rack1", groups):
            for place, (tag, index) in PLACES.items():
                labgridlab.client(address, "-p", place, "create")
                labgridlab.client(address, "-p", place, "add-match", f"rack1/board{index}/NetworkService")
                labgridlab.client(address, "-p", place, "set-tags", f"board={tag}", "site=test")
            yield address


@pytest.fixture(autouse=True)
def places_freed(coordinator: str) -> Iterator[None]:
    """Every test starts with every place free and no reservation."""
    yield
    for user, place in labgridlab.who(coordinator):
        labgridlab.client(coordinator, "-p", place, "release", "--kick", user=user)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("models"))


def write_farm(folder: Path, lab: list[netns.LabBoard], coordinator: str | None, measure: dict | None = None,
               **extra: Any) -> Path:  # fmt: skip
    """One SSH target for every place (its address comes from the place) and a farm of two labgrid pools."""
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("".join(board.host.known_hosts.read_text() for board in lab))
    target = {
        "name": "labboard", "transport": "ssh", "host": "from-labgrid", "key": str(lab[0].host.key),
        "known_hosts": str(known_hosts), "python": sys.executable, "workdir": str(folder / "work" / "{place}"),
        "connect_timeout_s": 4, "connect_attempts": 1, "link_timeout_s": 6, "measure": measure or QUICK,
    }  # fmt: skip
    (folder / "labboard.yaml").write_text(json.dumps(target))
    farm: dict[str, Any] = {
        "name": "testlab",
        "pools": {
            "rpi4": {"labgrid": {"tags": {"board": "rpi4"}, "target": "labboard.yaml"}},
            "jetson": {"labgrid": {"tags": {"board": "jetson", "site": "test"}, "target": "labboard.yaml"}},
        },
        "lease": {"ttl_s": 10, "heartbeat_s": 2},
        **extra,
    }
    if coordinator:
        farm["labgrid"] = {"coordinator": coordinator}
    path = folder / "lab.yaml"
    path.write_text(json.dumps(farm))
    return path


def document(folder: Path, run: int = 1) -> dict[str, Any]:
    return dict(json.loads((folder / "farm-runs" / f"testlab-{run}" / "farm.json").read_text()))


def test_places_are_boards_and_a_locked_place_is_waited_for_never_used(
    lab: list, coordinator: str, models: dict, tmp_path: Path
) -> None:
    """pi-b is locked by alice for the whole run: the rpi4 jobs all run on pi-a. nano-a, the only jetson place,
    is locked by bob when the run starts: its jobs wait until bob unlocks it, then run there."""
    labgridlab.client(coordinator, "-p", "pi-b", "lock", user="alice")
    labgridlab.client(coordinator, "-p", "nano-a", "lock", user="bob")
    farm = write_farm(tmp_path, lab, coordinator)
    chosen = [str(models["small"]), str(models["wide"])]
    process = farm_cli(tmp_path, "run", str(farm), *chosen, "--data", str(models["data"]))
    wait_for(lambda: [a for a in attempts(tmp_path) if a["outcome"] == "done"], 120, "a job done on pi-a")
    time.sleep(2)  # the jetson jobs keep waiting on nano-a meanwhile
    assert all(a["board"] != "nano-a" for a in attempts(tmp_path))
    with FarmStore(tmp_path / "history.sqlite") as store:
        waiting = {row["board"]: row["state"] for row in store.boards(1)}
    assert waiting["nano-a"] == "waiting"
    unlocked = time.time()
    labgridlab.client(coordinator, "-p", "nano-a", "unlock", user="bob")
    code, _out, err = finish(process)
    assert code == 0, err
    assert "Traceback" not in err and "acquired by" in err and "/bob" in err  # the wait said who held the place
    doc = document(tmp_path)
    boards = {(job["model"], job["pool"]): job["board"] for job in doc["jobs"]}
    assert boards == {("small", "rpi4"): "pi-a", ("wide", "rpi4"): "pi-a",
                      ("small", "jetson"): "nano-a", ("wide", "jetson"): "nano-a"}  # fmt: skip
    assert all(job["outcome"] == "pass" and job["attempts"] == 1 for job in doc["jobs"])
    on_nano = [a for a in doc["attempts"] if a["board"] == "nano-a"]
    assert on_nano and min(datetime.fromisoformat(a["started"]).timestamp() for a in on_nano) >= unlocked - 1
    assert not (tmp_path / "work" / "pi-b").exists()  # nothing was ever sent to alice's board
    # The board's address came from the place: the records name the lab board that nano-a matches.
    records = [json.loads(p.read_text()) for p in (tmp_path / "farm-runs").rglob("deploy-*.json")]
    hosts = {r["target"]["name"]: r["target"]["host"] for r in records}
    assert hosts == {"pi-a": lab[0].host.address, "nano-a": lab[2].host.address}
    # Afterwards: every place edgepipe took is released, every reservation dropped; alice still has hers.
    assert labgridlab.who(coordinator) == [("alice", "pi-b")]
    assert "Reservation" not in labgridlab.client(coordinator, "reservations")


def test_interrupted_or_killed_controllers_leave_no_place_acquired(
    lab: list, coordinator: str, models: dict, tmp_path: Path
) -> None:
    """SIGTERM mid-job: the places and reservations are given back before the controller exits. SIGKILL: the
    places stay acquired (labgrid has no leases) until resume releases the dead controller's acquisitions."""
    slow = {**QUICK, "min_seconds": 6, "repeats": 1}
    farm = write_farm(tmp_path, lab, coordinator, measure=slow)
    running = lambda: {a["board"] for a in attempts(tmp_path) if a["outcome"] == "running"}  # noqa: E731

    def two_jobs_running(process: Any) -> list[tuple[str, str]]:
        # (a worker may hold its place for a moment while it finds no job left for it)
        wait_for(lambda: len(running()) == 2 and len(labgridlab.who(coordinator)) == 2, 120, "two jobs running")
        held = labgridlab.who(coordinator)
        assert {place for _, place in held} == running(), held
        assert all(user.startswith(f"edgepipe-{process.pid}-") for user, _ in held), held
        return held

    process = farm_cli(tmp_path, "run", str(farm), str(models["slow"]), "--data", str(models["data"]))
    two_jobs_running(process)
    process.send_signal(signal.SIGTERM)
    code, _out, err = finish(process, 60)
    assert code == 130 and "Traceback" not in err, err
    assert labgridlab.who(coordinator) == [] and "Reservation" not in labgridlab.client(coordinator, "reservations")

    process = farm_cli(tmp_path, "resume", "1")
    held = two_jobs_running(process)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert labgridlab.who(coordinator) == held  # labgrid itself never frees a place
    started = time.monotonic()
    code, _out, err = finish(farm_cli(tmp_path, "resume", "1"))
    assert code == 0, err
    assert time.monotonic() - started < 60, err  # no waiting out labgrid or leases: the dead owner is known
    doc = document(tmp_path)
    assert [job["outcome"] for job in doc["jobs"]] == ["pass", "pass"]
    assert sorted(a["outcome"] for a in doc["attempts"]) == ["abandoned"] * 4 + ["done"] * 2
    assert labgridlab.who(coordinator) == []


def test_labgrid_mistakes_are_one_line(lab: list, coordinator: str, models: dict, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    small = str(models["small"])
    # No coordinator anywhere: exit 2, naming the farm file's field and LG_COORDINATOR.
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    farm = write_farm(tmp_path, lab, None)
    code, _out, err = finish(farm_cli(tmp_path, "run", str(farm), small), 60)
    assert code == 2 and "labgrid.coordinator: no labgrid coordinator given" in err and "Traceback" not in err
    shipped = Path(__file__).parents[1] / "farms" / "labgrid.yaml"
    code, _out, err = finish(farm_cli(tmp_path, "run", str(shipped), small), 60)
    assert code == 2 and "labgrid.yaml: labgrid.coordinator: no labgrid coordinator given" in err, err
    # A coordinator that does not answer: the infrastructure's fault (exit 10), one line, nothing run.
    farm = write_farm(tmp_path, lab, "127.0.0.1:1")
    started = time.monotonic()
    code, _out, err = finish(farm_cli(tmp_path, "run", str(farm), small), 60)
    assert code == 10, err
    assert "labgrid coordinator 127.0.0.1:1" in err and "Traceback" not in err and "ERROR:root" not in err
    assert time.monotonic() - started < 40
    # Tags that no place has: exit 2, naming the field.
    farm = write_farm(tmp_path, lab, coordinator)
    spec = json.loads(farm.read_text())
    spec["pools"]["jetson"]["labgrid"]["tags"] = {"board": "jetson", "site": "elsewhere"}
    farm.write_text(json.dumps(spec))
    code, _out, err = finish(farm_cli(tmp_path, "run", str(farm), small), 60)
    assert code == 2 and "pools.jetson.labgrid.tags: no labgrid place" in err and "site=elsewhere" in err, err
    # A pool with boards and labgrid both, and a template that is not an SSH target.
    spec["pools"]["jetson"] = {"boards": ["local"], "labgrid": {"tags": {"board": "jetson"}, "target": "local"}}
    farm.write_text(json.dumps(spec))
    code, _out, err = finish(farm_cli(tmp_path, "run", str(farm), small), 60)
    assert code == 2 and "either 'boards' (targets) or 'labgrid'" in err, err
    spec["pools"]["jetson"] = {"labgrid": {"tags": {"board": "jetson"}, "target": "local"}}
    farm.write_text(json.dumps(spec))
    code, _out, err = finish(farm_cli(tmp_path, "run", str(farm), small), 60)
    assert code == 2 and "pools.jetson.labgrid.target: target 'local' uses transport 'local'" in err, err
    with FarmStore(tmp_path / "history.sqlite") as store:
        assert store.farm_runs() == []


def _groups(lab: list) -> dict[str, Any]:
    return {board.name: {"NetworkService": {"address": board.host.address, "port": board.host.port,
                                            "username": board.host.user}} for board in lab}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:  # a port of its own: a restarted coordinator listens on it again
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _lose_coordinator_mid_run(lab: list, models: dict, tmp_path: Path, folder: Path, port: int,
                              **extra: Any) -> subprocess.Popen[str]:  # fmt: skip
    """A coordinator of the test's own with the three places; a farm run started on it; once its first job is
    done, the coordinator is killed (its exporter goes with it, as labgrid's exporters do). Returns the run."""
    slow = {**QUICK, "min_seconds": 1.5, "repeats": 1}
    chosen = [str(models["small"]), str(models["wide"]), str(models["copy"])]
    with labgridlab.coordinator(folder, port) as address, labgridlab.exporter(address, folder, "rack2", _groups(lab)):
        for place, (tag, index) in PLACES.items():
            labgridlab.client(address, "-p", place, "create")
            labgridlab.client(address, "-p", place, "add-match", f"rack2/board{index}/NetworkService")
            labgridlab.client(address, "-p", place, "set-tags", f"board={tag}", "site=test")
        wait_for(lambda: "nano-a" in (folder / "places.yaml").read_text() if (folder / "places.yaml").exists()
                 else False, 30, "the coordinator to save its places")  # fmt: skip
        farm = write_farm(tmp_path, lab, address, measure=slow)
        spec = json.loads(farm.read_text())
        spec["labgrid"].update(extra)
        farm.write_text(json.dumps(spec))
        process = farm_cli(tmp_path, "run", str(farm), *chosen, "--data", str(models["data"]))
        wait_for(lambda: [a for a in attempts(tmp_path) if a["outcome"] == "done"], 120, "a first job done")
        subprocess.run(["pkill", "-KILL", "-f", f"labgrid.remote.coordinator -l 127.0.0.1:{port}"], check=True)
        time.sleep(1)
    return process


def test_a_restarted_coordinator_is_reconnected_to_and_no_board_is_blamed(
    lab: list, models: dict, tmp_path: Path
) -> None:
    """The lab's coordinator restarts mid-run (an upgrade): it forgets every acquisition and reservation, its
    exporter reconnects after it. The farm reconnects too, counts nothing against the boards, and finishes every
    job; no place stays acquired."""
    folder, port = tmp_path / "coordinator", _free_port()
    process = _lose_coordinator_mid_run(lab, models, tmp_path, folder, port)
    time.sleep(3)  # the coordinator is gone for a while
    with labgridlab.coordinator(folder, port) as address, labgridlab.exporter(address, folder, "rack2", _groups(lab)):
        code, _out, err = finish(process, 240)
        assert code == 0, err
        assert "Traceback" not in err and "reconnected to the labgrid coordinator" in err, err
        doc = document(tmp_path)
        assert [job["outcome"] for job in doc["jobs"]] == ["pass"] * 6
        assert all(not board["quarantined"] and board["failures"] == 0 for board in doc["boards"]), doc["boards"]
        assert all(a["outcome"] == "done" for a in doc["attempts"]), doc["attempts"]
        assert not re.search(r"^\s*[\d.]+s\s+\S+\s+(failed|quarantined)\s", err, re.MULTILINE), err  # board lines
        assert labgridlab.who(address) == []


def test_a_coordinator_that_never_comes_back_ends_the_run_as_infrastructure(
    lab: list, models: dict, tmp_path: Path
) -> None:
    """``labgrid.reconnect_s`` after the coordinator went away, the boards that still have jobs fail their turns
    and are quarantined; the jobs not run end as infrastructure errors (exit 10), the ones done stay done."""
    started = time.monotonic()
    process = _lose_coordinator_mid_run(lab, models, tmp_path, tmp_path / "coordinator", _free_port(), reconnect_s=3)
    code, _out, err = finish(process, 180)
    assert code == 10, err
    assert "Traceback" not in err and time.monotonic() - started < 150
    doc = document(tmp_path)
    outcomes = [job["outcome"] for job in doc["jobs"]]
    assert "pass" in outcomes and "infra-error" in outcomes and set(outcomes) <= {"pass", "infra-error"}
    quarantined = [board for board in doc["boards"] if board["quarantined"]]
    assert quarantined and all("labgrid coordinator" in board["reason"] for board in quarantined), doc["boards"]
    assert "reconnecting" in err  # the wait was said while it lasted
