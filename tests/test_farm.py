"""``edgepipe farm`` through the real CLI on a real lab: four boards, each OpenSSH's sshd in its own network
namespace with its own address on one bridge (tests/netns.py), cables the tests unplug, a real SQLite history
shared by controllers that the tests kill.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
from browser import artifacts_dir, body_attribute, load
from farmkit import QUICK, attempts, board_intervals, board_target, farm_cli, finish, make_models, wait_for

from edgepipe.farm.store import FarmStore


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[netns.LabBoard]]:
    reason = netns.available()
    if reason:
        pytest.fail(f"the farm tests need network namespaces: {reason} (CI runs as root with iproute2)")
    with netns.lab(tmp_path_factory.mktemp("lab"), 4) as boards:
        yield boards


@pytest.fixture(autouse=True)
def cables_back(lab: list[netns.LabBoard]) -> Iterator[None]:
    yield
    for board in lab:
        board.cable.plug()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("models"))


def write_farm(folder: Path, lab: list[netns.LabBoard], pools: dict[str, list[int]], measure: dict | None = None,
               lease: dict | None = None, **pool_settings: Any) -> Path:  # fmt: skip
    """Target files for the lab's boards and a farm file grouping them (board i of the lab is ``board{i}``)."""
    (folder / "targets").mkdir(parents=True, exist_ok=True)
    for board in lab:
        target = board_target(board, folder, measure or QUICK)
        (folder / "targets" / f"{board.name}.yaml").write_text(json.dumps(target))
    farm = {
        "name": "testlab",
        "pools": {
            pool: {"boards": [f"targets/board{i}.yaml" for i in indices], **pool_settings}
            for pool, indices in pools.items()
        },
        "lease": lease or {"ttl_s": 10, "heartbeat_s": 2},
    }
    path = folder / "lab.yaml"
    path.write_text(json.dumps(farm))
    return path


def measuring_on(workdir: Path) -> bool:
    """The board runs the agent's sandboxed child (the process that loads and times the model)."""
    found = subprocess.run(["pgrep", "-f", f"{workdir}/agent/.* _sandbox"], capture_output=True, text=True)
    return bool(found.stdout.split())


def document(folder: Path, run: int = 1) -> dict[str, Any]:
    return dict(json.loads((folder / "farm-runs" / f"testlab-{run}" / "farm.json").read_text()))


def assert_no_overlap(spans: dict[str, list[tuple[float, float]]]) -> None:
    for board, intervals in spans.items():
        ordered = sorted(intervals)
        for (_, end), (start, _) in itertools.pairwise(ordered):
            assert start >= end, f"two jobs overlapped on {board}: one ended at {end:.3f}, the next began {start:.3f}"


# ------------------------------------------------------------------------------------------------ the matrix
def test_matrix_of_models_and_pools_with_baseline(lab: list, models: dict[str, Path], tmp_path: Path) -> None:
    farm = write_farm(tmp_path, lab, {"rpi4": [0, 1], "jetson": [2, 3]})
    code, out, err = finish(farm_cli(
        tmp_path, "run", str(farm), str(models["copy"]), str(models["wide"]), "--data", str(models["data"]),
        "--baseline", str(models["small"]), "--tag", "pr-7", "--junit", "farm.xml",
    ))  # fmt: skip
    assert code == 7, err  # the wide model is a latency regression against the small baseline
    assert "Traceback" not in err
    doc = document(tmp_path)
    cells = {(job["model"], job["pool"]): job for job in doc["jobs"]}
    assert set(cells) == {(m, p) for m in ("small", "wide") for p in ("rpi4", "jetson")}
    for pool, boards in (("rpi4", {"board0", "board1"}), ("jetson", {"board2", "board3"})):
        assert cells[("small", pool)]["outcome"] == "pass"  # the same bytes as the baseline: no regression
        assert cells[("wide", pool)]["outcome"] == "regression"
        assert "latency" in cells[("wide", pool)]["message"] and cells[("wide", pool)]["latency_change"] > 0.03
        for model in ("small", "wide"):
            job = cells[(model, pool)]
            assert job["board"] in boards and job["attempts"] == 1
            assert job["p50_ms"] > 0 and job["peak_rss_kb"] > 0 and job["accuracy"] is not None
    assert doc["exit_code"] == 7 and doc["counts"]["pass"] == 2 and doc["counts"]["regression"] == 2
    # JUnit: one case per job, the regressions as failures.
    suite = ET.parse(tmp_path / "farm.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "2"
    assert {(c.get("classname"), c.get("name")) for c in suite.iter("testcase")} == {
        (f"edgepipe.farm.{p}", m) for m in ("small", "wide") for p in ("rpi4", "jetson")
    }
    html = tmp_path / "farm-runs" / "testlab-1" / "farm.html"
    for width in (1400, 390):  # a desktop and a phone: nothing fetched, no script error, no sideways scrolling
        page = load(html, screenshot=artifacts_dir() / f"farm-{width}.png", width=width)
        assert page.console == [] and page.page_requests == []
        assert body_attribute(page.dom, "data-farm-schema") == "edgepipe.farm/1"
        assert body_attribute(page.dom, "data-overflow-px") == "0"
        assert 'id="matrix"' in page.dom and page.dom.count("badge failed") >= 2
        assert page.dom.count('class="bar passed"') == 4  # the timeline: one bar per attempt
    markdown = (tmp_path / "farm-runs" / "testlab-1" / "farm.md").read_text()
    assert "| wide | regression · p50 " in markdown and "% vs baseline)" in markdown
    assert "farm run 1" in out and "2 regression (of 4 jobs)" in err
    # The history has every run; the user's tag names the candidates only.
    with FarmStore(tmp_path / "history.sqlite") as store:
        tagged = store.runs(tag="pr-7")
        everything = store.runs()
    assert len(tagged) == 4 and len(everything) == 8
    # The host evaluated each model once, not once per board: its reference result is the same object.
    records = [json.loads(p.read_text()) for p in (tmp_path / "farm-runs").rglob("deploy-*.json")]
    wide = [r for r in records if r["model"]["model"].endswith("wide.tflite")]
    references = {json.dumps(r["host_reference"], sort_keys=True) for r in wide}
    assert len(records) == 4 and len(wide) == 2 and len(references) == 1
    assert_no_overlap(board_intervals(tmp_path / "history.sqlite"))
    # The timeline: every attempt once, on its board, in order, within the run's span; busy = attempts / span.
    timeline = doc["timeline"]
    lanes = {lane["board"]: lane for lane in timeline["boards"]}
    assert set(lanes) <= {"board0", "board1", "board2", "board3"}
    assert sum(len(lane["bars"]) for lane in lanes.values()) == len(doc["attempts"]) == 4
    for lane in lanes.values():
        bars = sorted(lane["bars"], key=lambda bar: bar["start_s"])
        assert all(bar["start_s"] >= 0 and bar["seconds"] > 0 for bar in bars)
        assert all(a["start_s"] + a["seconds"] <= b["start_s"] + 1e-3 for a, b in itertools.pairwise(bars))
        assert bars[-1]["start_s"] + bars[-1]["seconds"] <= timeline["span_s"] + 1e-3
        assert lane["busy"] == pytest.approx(sum(bar["seconds"] for bar in bars) / timeline["span_s"], abs=1e-3)
    assert "Boards busy over the run's" in markdown


# -------------------------------------------------------------------------------------------------- faults
def test_link_cut_mid_measurement_is_retried_on_another_board(lab: list, models: dict, tmp_path: Path) -> None:
    slow = {**QUICK, "min_seconds": 8, "repeats": 1}
    farm = write_farm(tmp_path, lab, {"rpi4": [0, 1]}, measure=slow, quarantine_after=1, attempts=3)
    process = farm_cli(tmp_path, "run", str(farm), str(models["slow"]), "--data", str(models["data"]))
    running = wait_for(lambda: [a for a in attempts(tmp_path) if a["outcome"] == "running"], 60, "a running job")
    victim = running[0]["board"]
    wait_for(lambda: measuring_on(tmp_path / "work" / victim), 60, "the agent to measure")
    time.sleep(1)  # inside the 8 s of timed runs
    cut = time.monotonic()
    next(b for b in lab if b.name == victim).cable.unplug()
    wait_for(lambda: any(a["outcome"] == "infra-error" for a in attempts(tmp_path)), 45, "the cut to be noticed")
    noticed = time.monotonic() - cut
    code, _out, err = finish(process)
    assert code == 0, err
    assert noticed < 45, f"the silent link was noticed after {noticed:.0f} s"
    tried = attempts(tmp_path)
    assert [a["outcome"] for a in tried] == ["infra-error", "done"]
    assert tried[0]["board"] == victim and tried[1]["board"] != victim  # retried elsewhere, not lost
    doc = document(tmp_path)
    assert doc["jobs"][0]["outcome"] == "pass" and doc["jobs"][0]["attempts"] == 2
    quarantined = {b["board"]: b for b in doc["boards"] if b["quarantined"]}
    assert set(quarantined) == {victim} and "infrastructure failure in a row" in quarantined[victim]["reason"]
    with FarmStore(tmp_path / "history.sqlite") as store:
        assert [row.target for row in store.runs()] == [tried[1]["board"]]  # exactly one result, from the survivor


def test_link_cut_mid_upload_leaves_no_partial_blob(lab: list, models: dict, tmp_path: Path) -> None:
    from edgepipe.keras_compat import keras, tf

    k = keras()
    inputs = k.Input((64,))
    big = k.Model(inputs, k.layers.Dense(10)(k.layers.Dense(8192)(inputs)))  # 2.2 MB
    model = tmp_path / "big.tflite"
    model.write_bytes(tf().lite.TFLiteConverter.from_keras_model(big).convert())
    farm = write_farm(tmp_path, lab, {"rpi4": [0]}, quarantine_after=3, attempts=3)
    lab[0].cable.limit("1mbit")  # about 18 s for the upload
    blobs = tmp_path / "work" / "board0" / "blobs"
    try:
        process = farm_cli(tmp_path, "run", str(farm), str(model), "--data", str(models["data"]))
        wait_for(lambda: blobs.is_dir() and any(".partial-" in p.name for p in blobs.iterdir()), 60, "the upload")
        time.sleep(2)
        lab[0].cable.unplug()
        wait_for(lambda: any(a["outcome"] == "infra-error" for a in attempts(tmp_path)), 45, "the cut upload")
        lab[0].cable.plug()
        lab[0].cable.unlimit()
        code, _out, err = finish(process)
    finally:
        lab[0].cable.plug()
    # The only board of the pool got the job again once the link was back: one result, two attempts.
    assert code == 0, err
    assert [a["outcome"] for a in attempts(tmp_path)] == ["infra-error", "done"]
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert hashlib.sha256((blobs / f"{sha}.tflite").read_bytes()).hexdigest() == sha
    # The cut upload's receiver gives up after the link's idle bound and removes its partial file.
    wait_for(lambda: not [p for p in blobs.iterdir() if ".partial-" in p.name], 40, "the partial file to go")


def test_board_that_never_comes_back_is_quarantined(lab: list, models: dict, tmp_path: Path) -> None:
    # Jobs must still wait while the dead board fails its check twice: they measure for 3 s, its connects give up
    # after 1 s (two checks and the poll between them: about 3 s, before the third job is taken).
    farm = write_farm(tmp_path, lab, {"rpi4": [0, 1, 2]}, measure={**QUICK, "min_seconds": 3, "repeats": 1},
                      quarantine_after=2)  # fmt: skip
    dead_target = tmp_path / "targets" / "board2.yaml"
    dead_target.write_text(json.dumps({**json.loads(dead_target.read_text()), "connect_timeout_s": 1}))
    lab[2].cable.unplug()
    code, _out, err = finish(farm_cli(tmp_path, "run", str(farm), *[str(models["slow"])] * 3,
                                      "--data", str(models["data"])))  # fmt: skip
    assert code == 0, err
    doc = document(tmp_path)
    assert all(job["outcome"] == "pass" for job in doc["jobs"]) and len(doc["jobs"]) == 3
    assert {job["board"] for job in doc["jobs"]} <= {"board0", "board1"}
    dead = next(b for b in doc["boards"] if b["board"] == "board2")
    assert dead["quarantined"] and dead["failures"] == 2 and "health check failed" in dead["reason"]
    assert "board2" in (tmp_path / "farm-runs" / "testlab-1" / "farm.md").read_text()


def test_pool_without_a_healthy_board_ends_as_infrastructure(lab: list, models: dict, tmp_path: Path) -> None:
    farm = write_farm(tmp_path, lab, {"rpi4": [0], "jetson": [3]}, quarantine_after=1)
    lab[3].cable.unplug()
    code, _out, err = finish(farm_cli(tmp_path, "run", str(farm), str(models["small"]), "--data", str(models["data"]),
                                     "--junit", "farm.xml"))  # fmt: skip
    assert code == 10, err
    assert "Traceback" not in err and "1 infra-error (of 2 jobs)" in err
    jobs = {job["pool"]: job for job in document(tmp_path)["jobs"]}
    assert jobs["rpi4"]["outcome"] == "pass"
    assert jobs["jetson"]["outcome"] == "infra-error" and "no healthy board" in jobs["jetson"]["message"]
    suite = ET.parse(tmp_path / "farm.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("errors") == "1"


def test_a_model_that_fails_on_the_board_is_not_retried(lab: list, models: dict, tmp_path: Path) -> None:
    farm = write_farm(tmp_path, lab, {"rpi4": [0, 1]}, attempts=3)
    code, _out, err = finish(farm_cli(tmp_path, "run", str(farm), str(models["broken"])))
    assert code == 21, err  # InvalidModel
    tried = attempts(tmp_path)
    assert len(tried) == 1 and tried[0]["outcome"] == "model-error"
    doc = document(tmp_path)
    assert doc["jobs"][0]["outcome"] == "model-error" and "InvalidModel" in doc["jobs"][0]["message"]
    assert not any(b["quarantined"] or b["failures"] for b in doc["boards"])  # the board did nothing wrong


# ------------------------------------------------------------------------------------- controllers and leases
def test_killed_controller_resumes_without_losing_or_doubling(
    lab: list, models: dict, tmp_path: Path, history_location: Any
) -> None:
    history = history_location
    slow = {**QUICK, "min_seconds": 6, "repeats": 1}
    farm = write_farm(tmp_path, lab, {"rpi4": [0, 1]}, measure=slow)
    chosen = [str(models["slow"]), str(models["wide"]), str(models["small"])]
    process = farm_cli(tmp_path, "run", str(farm), *chosen, "--data", str(models["data"]), history=history)
    outcomes = lambda: [a["outcome"] for a in attempts(tmp_path, history=history)]  # noqa: E731
    wait_for(lambda: "done" in outcomes() and "running" in outcomes(), 120, "one job done, one running")
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    with FarmStore(history) as store:
        before = {job["model"]: job["state"] for job in store.jobs(1)}
    assert "done" in before.values() and set(before.values()) != {"done"}
    # The same command again finds the unfinished run and completes it (no lease wait: the owner is dead).
    started = time.monotonic()
    code, out, err = finish(
        farm_cli(tmp_path, "run", str(farm), *chosen, "--data", str(models["data"]), history=history)
    )
    assert code == 0, err
    assert "resumed" in out and time.monotonic() - started < 120
    doc = document(tmp_path)
    assert [job["outcome"] for job in doc["jobs"]] == ["pass"] * 3
    outcomes = [a["outcome"] for a in doc["attempts"]]
    assert outcomes.count("done") == 3 and "abandoned" in outcomes
    with FarmStore(history) as store:
        results = store.runs()
        finished_before = [m for m, state in before.items() if state == "done"]
    assert len(results) == 3  # one result per job: nothing lost, nothing twice
    assert len({job["run_id"] for job in doc["jobs"]}) == 3
    # A finished run resumed again only writes its report.
    code, out, err = finish(farm_cli(tmp_path, "resume", "1", history=history))
    assert code == 0 and len(attempts(tmp_path, history=history)) == len(doc["attempts"]), err
    assert finished_before


def test_a_job_of_a_controller_on_another_machine_is_taken_over_when_its_lease_lapses(
    lab: list, models: dict, tmp_path: Path
) -> None:
    """A controller on another machine died holding a job: its lease is still valid when resume starts, so the
    job is not touched then; once the lease lapses, the waiting workers take it over and finish the run."""
    farm = write_farm(tmp_path, lab, {"rpi4": [0]}, measure={**QUICK, "min_seconds": 6, "repeats": 1})
    process = farm_cli(tmp_path, "run", str(farm), str(models["slow"]), "--data", str(models["data"]))
    wait_for(lambda: measuring_on(tmp_path / "work" / "board0"), 60, "the agent to measure")
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    with FarmStore(tmp_path / "history.sqlite") as store, store._write():  # as if it ran on another host
        elsewhere = "otherhost:4242:dead"
        store._db.execute("UPDATE farm_jobs SET owner = ?", (elsewhere,))
        store._db.execute("UPDATE farm_leases SET owner = ?, expires = ?", (elsewhere, time.time() + 8))
    started = time.monotonic()
    code, out, err = finish(farm_cli(tmp_path, "resume", "1"), 120)
    assert code == 0 and "resumed" in out, err
    assert time.monotonic() - started > 7  # it waited for the lease, it did not take a live one
    assert [a["outcome"] for a in attempts(tmp_path)] == ["abandoned", "done"]


def test_sigterm_hands_the_jobs_back_and_frees_the_boards(lab: list, models: dict, tmp_path: Path) -> None:
    """A cancelled CI job (SIGTERM): exit 130, the running job back in the queue, its board's lease released (not
    left to lapse), no report in place of a finished one; resume then runs the job."""
    farm = write_farm(tmp_path, lab, {"rpi4": [0]}, measure={**QUICK, "min_seconds": 8, "repeats": 1},
                      lease={"ttl_s": 120, "heartbeat_s": 10})  # fmt: skip
    process = farm_cli(tmp_path, "run", str(farm), str(models["slow"]), "--data", str(models["data"]))
    wait_for(lambda: measuring_on(tmp_path / "work" / "board0"), 60, "the agent to measure")
    process.send_signal(signal.SIGTERM)
    code, _out, err = finish(process, 60)
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    with FarmStore(tmp_path / "history.sqlite") as store:
        assert [job["state"] for job in store.jobs(1)] == ["pending"]
        assert [a["outcome"] for a in store.attempts(1)] == ["abandoned"]
        assert next(lease for lease in store.leases() if lease["board"] == "board0")["owner"] is None
    assert not (tmp_path / "farm-runs" / "testlab-1" / "farm.json").exists()
    code, out, err = finish(farm_cli(tmp_path, "resume", "1"))
    assert code == 0 and "resumed" in out, err
    assert [a["outcome"] for a in attempts(tmp_path)] == ["abandoned", "done"]


def test_two_controllers_never_measure_on_one_board_at_once(
    lab: list, models: dict, tmp_path: Path, history_location: Any
) -> None:
    """Two CI jobs on one lab sharing a history: a SQLite file on one machine, or PostgreSQL (where the jobs are
    claimed with SELECT ... FOR UPDATE SKIP LOCKED and the leases judged by the server's clock)."""
    history = history_location
    farm = write_farm(tmp_path, lab, {"rpi4": [0, 1]}, measure={**QUICK, "min_seconds": 1.5, "repeats": 1})
    # The first controller gets twice the work, so it is still measuring when the second one gets going (on a
    # loaded CI machine the second started its first job 8 s after the first, once: after 3 jobs had ended).
    chosen = [str(models["slow"])] * 3
    first = farm_cli(tmp_path, "run", str(farm), *chosen, *chosen, "--data", str(models["data"]), "--tag", "a",
                     history=history)  # fmt: skip
    second = farm_cli(tmp_path, "run", str(farm), *chosen, "--data", str(models["data"]), "--tag", "b",
                      "--out", "second", history=history)  # fmt: skip
    (code_a, _, err_a), (code_b, _, err_b) = finish(first), finish(second)
    assert code_a == 0 and code_b == 0, err_a + err_b
    spans = board_intervals(history)
    assert sum(len(v) for v in spans.values()) == 9
    assert_no_overlap(spans)  # seen from the boards: one agent job at a time on each
    with FarmStore(history) as store:
        rows = {tag: store.runs(tag=tag) for tag in ("a", "b")}
        clocks = {tag: [store.record(r.id)["device"]["clock"] for r in found] for tag, found in rows.items()}
        fences = sorted((a["board"], a["fence"]) for run in (1, 2) for a in store.attempts(run))
    assert len(rows["a"]) == 6 and len(rows["b"]) == 3
    # The two controllers really competed: both used the same boards, while the other one was running.
    assert {r.target for r in rows["a"]} & {r.target for r in rows["b"]}
    first_a, last_a = min(c["started"] for c in clocks["a"]), max(c["finished"] for c in clocks["a"])
    first_b, last_b = min(c["started"] for c in clocks["b"]), max(c["finished"] for c in clocks["b"])
    assert first_a < last_b and first_b < last_a
    assert len(set(fences)) == 9  # every job under a lease of its own (a new fencing number per acquisition)


def test_a_result_after_the_controller_handed_the_job_back_leaves_the_attempt_abandoned(
    history_location: Any,
) -> None:
    """SIGTERM: the controller abandons its jobs while a worker is still finishing one; the worker's late failure
    is discarded and the attempt stays "abandoned" (a race CI once lost: it became "fenced-off")."""
    with FarmStore(history_location) as store:
        run = store.create_run("lab", "key", {"models": []}, [("m", "rpi4")], [("board0", "rpi4")])
        fence = store.acquire("board0", "ctl:1:a", ttl_s=30)
        claim = store.claim(run, "rpi4", "board0", "ctl:1:a", fence, healthy_boards=1)
        assert claim is not None
        store.abandon("ctl:1:a")
        assert store.fail(claim, "CommandError", 15, "the agent was killed", attempts=3) is None
        assert [a["outcome"] for a in store.attempts(run)] == ["abandoned"]
        assert [job["state"] for job in store.jobs(run)] == ["pending"]


def test_a_late_result_is_fenced_off(history_location: Any) -> None:
    """A worker whose lease expired and was taken by another cannot write its result, nor renew the lease."""
    record = {"target": {"name": "board0"}, "model": {"sha256": "ab" * 32, "bytes": 1}, "status": "passed"}
    with FarmStore(history_location) as store:
        run = store.create_run("lab", "key", {"models": []}, [("m", "rpi4")], [("board0", "rpi4"), ("board1", "rpi4")])
        # The lease must outlive the next two statements on a loaded CI machine (0.3 s did not, once): 5 s.
        fence = store.acquire("board0", "slow:1:a", ttl_s=5)
        assert fence == 1
        claim = store.claim(run, "rpi4", "board0", "slow:1:a", fence, healthy_boards=2)
        assert claim is not None
        assert store.acquire("board0", "fast:2:b", ttl_s=30) is None  # held: nobody else gets it
        time.sleep(5.2)
        assert not store.renew("board0", "slow:1:a", fence, ttl_s=30)  # expired: never renewed
        assert store.acquire("board0", "fast:2:b", ttl_s=30) == 2
        assert not store.complete(claim, "pass", 0, {}, {"candidate": record})
        assert store.runs(include_incomplete=True) == []
        assert store.attempts(run)[0]["outcome"] == "fenced-off"
        assert store.reclaim(run) == [claim.job]  # back in the queue for the new holder
        again = store.claim(run, "rpi4", "board0", "fast:2:b", 2, healthy_boards=2)
        assert again is not None and again.number == 1 and again.fence == 2
        assert store.complete(again, "pass", 0, {}, {"candidate": record})
        assert [job["state"] for job in store.jobs(run)] == ["done"]


def test_a_job_that_failed_on_a_board_goes_back_to_it_when_no_other_board_takes_it(
    history_location: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other board of the pool is healthy but never free (a labgrid place someone keeps locked): the job
    waits for it only RETRY_ELSEWHERE_S, then the board it failed on may retry it (seen hanging a CI run)."""
    from edgepipe.farm import store as farm_store

    monkeypatch.setattr(farm_store, "RETRY_ELSEWHERE_S", 2.0)
    with FarmStore(history_location) as store:
        run = store.create_run("lab", "key", {"models": []}, [("m", "rpi4")], [("board0", "rpi4"), ("board1", "rpi4")])
        fence = store.acquire("board0", "me:1:a", ttl_s=30)
        claim = store.claim(run, "rpi4", "board0", "me:1:a", fence, healthy_boards=2)
        assert claim is not None
        assert store.fail(claim, "AgentError", 16, "the agent crashed", attempts=3) == "pending"
        assert not store.claimable(run, "rpi4", "board0", healthy_boards=2)  # another board should try first
        assert store.claim(run, "rpi4", "board0", "me:1:a", fence, healthy_boards=2) is None
        assert store.claimable(run, "rpi4", "board1", healthy_boards=2)
        time.sleep(3.1)  # attempts end on whole seconds
        assert store.claimable(run, "rpi4", "board0", healthy_boards=2)
        again = store.claim(run, "rpi4", "board0", "me:1:a", fence, healthy_boards=2)
        assert again is not None and again.number == 2


def test_status_shows_jobs_boards_leases_and_attempts(lab: list, models: dict, tmp_path: Path) -> None:
    slow = {**QUICK, "min_seconds": 4, "repeats": 1}
    farm = write_farm(tmp_path, lab, {"rpi4": [0]}, measure=slow)
    process = farm_cli(tmp_path, "run", str(farm), str(models["slow"]), "--data", str(models["data"]))
    wait_for(lambda: [a for a in attempts(tmp_path) if a["outcome"] == "running"], 60, "a running job")
    code, out, err = finish(farm_cli(tmp_path, "status", "1"), 60)
    assert code == 0, err
    assert "farm run 1 (testlab): running" in out and "fence 1" in out and "board0" in out
    assert finish(process)[0] == 0
    code, out, err = finish(farm_cli(tmp_path, "status"), 60)
    assert code == 0 and "testlab" in out and "1/1" in out, err


def test_python_api_on_the_shipped_one_board_farm(models: dict, tmp_path: Path) -> None:
    """``farms/local.yaml`` (this machine as the only board) through ``edgepipe.farm_run``, as the README shows."""
    import edgepipe

    farm = Path(__file__).resolve().parents[1] / "farms" / "local.yaml"
    outcome = edgepipe.farm_run(farm, [models["copy"]], data=models["data"], baseline=str(models["small"]),
                                out=tmp_path / "out", history=tmp_path / "history.sqlite")  # fmt: skip
    assert outcome.exit_code == 0 and not outcome.resumed
    [job] = outcome.document["jobs"]
    assert (job["model"], job["pool"], job["board"], job["outcome"]) == ("small", "host", "local", "pass")
    assert any(check["name"] == "latency" for check in job["checks"])
    assert (tmp_path / "out" / "farm.html").is_file()
    again = edgepipe.farm_run(farm, [models["copy"]], data=models["data"], baseline=str(models["small"]),
                              out=tmp_path / "out", history=tmp_path / "history.sqlite")  # fmt: skip
    assert again.run == outcome.run + 1  # a finished run is not resumed: the same command measures anew


def test_a_killed_test_runs_namespaces_are_removed_by_the_next(lab: list) -> None:
    """A test run killed with SIGKILL never reaches its clean-up: the next lab removes what it left (names carry
    the pid of their creator, and that process is gone); what belongs to a live process stays."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    subprocess.run(["ip", "netns", "add", f"ep{pid}b0"], check=True)
    subprocess.run(["ip", "link", "add", f"epbr{pid}", "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", f"eph{pid}b0", "type", "veth", "peer", "name", f"epb{pid}b0"], check=True)
    subprocess.run(["ip", "link", "set", f"epb{pid}b0", "netns", f"ep{pid}b0"], check=True)
    removed = netns.remove_leftovers()
    assert set(removed) == {f"ep{pid}b0", f"epbr{pid}"}
    assert f"ep{pid}b0" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"epbr{pid}" not in links and f"eph{pid}b0" not in links
    mine = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ep{os.getpid()}b0" in mine  # this run's lab (the module's fixture) is left alone
