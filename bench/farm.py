"""Device-farm benchmark: how close the farm comes to the ideal schedule, and what it survives.

    .venv/bin/python bench/farm.py               # makespan: 8 boards, 64 jobs; one controller, then two on PostgreSQL
    .venv/bin/python bench/farm.py --faults      # 20 link cuts, 10 controller SIGKILLs, double bookings (+ labgrid)
    .venv/bin/python bench/farm.py --faults bookings   # one part: cuts, kills or bookings

The lab is the tests' lab (tests/netns.py): eight boards, each OpenSSH's sshd in its own network namespace with
its own address on one bridge, running the real agent; the controllers are real ``edgepipe farm`` processes; the
PostgreSQL server and the labgrid coordinator and exporter are real too (tests/postgres.py, tests/labgridlab.py).
Needs root, iproute2, PostgreSQL's binaries and labgrid: what ``.ci/run`` installs.

Makespan: every job is a candidate paired with its baseline on one board (two deploys). A job's time is its attempt
from claim to result, as the history recorded it; the ideal is the sum of the job times over 8 (every board busy
all the time, no scheduling). The farm's makespan runs from the farm run's creation (after the controller has
started) to its last result; the wall time of the controller processes is printed next to it. The gap between a
board's consecutive jobs is the lease and scheduling overhead per job (release, lease, claim, report to the
history); the delay to a board's first job is its health check.

Faults, each counted from the history and the boards, not from the controller's word:
- link cuts: a board's cable unplugged (``ip link set down``) at a random moment of a job, for 2-12 s, twenty
  times in all; uploads are throttled to 4 Mbit/s so some cuts land in the middle of one. Counted: jobs without a
  result, results recorded twice, files at the boards' final blob paths whose bytes do not hash to their name;
- controller SIGKILLs: ten farm runs, each controller killed at another moment (0.5 to 20 s after it started),
  then finished with ``farm resume`` (or the same ``farm run`` when it died before creating its run). Counted:
  jobs lost, results recorded twice;
- double bookings: two controllers sharing PostgreSQL on the 8 boards, and the same through labgrid places; an
  overlap is two agent jobs on one board whose times (the board's own clock) intersect.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the lab rig the farm tests use

import labgridlab  # noqa: E402
import netns  # noqa: E402
import postgres  # noqa: E402
from farmkit import board_intervals, board_target  # noqa: E402
from paired import print_table  # noqa: E402

from edgepipe.farm.store import FarmStore  # noqa: E402

BOARDS = 8
MEASURE = {"runs": 30, "min_seconds": 0.2, "repeats": 2, "time_limit_s": 120}
OUTCOMES = {"pass", "regression", "inconclusive", "model-error", "infra-error"}
LENIENT = ["--max-accuracy-drop", "100"]  # untrained models: their accuracies are noise, the latency is judged
JUDGED = (0, 7, 17)  # every job measured and judged: the models are untrained, a verdict may go either way


# ------------------------------------------------------------------------------------------------ the models
def make_models(folder: Path, count: int, hidden: list[int], prefix: str) -> tuple[list[Path], Path, Path]:
    """``count`` float Dense models of one shape (other seeds, so other bytes), a baseline and the digits' data."""
    from edgepipe.examples.digits import load
    from edgepipe.keras_compat import keras, tf

    folder.mkdir(parents=True, exist_ok=True)
    data = load()
    x = data.x_test[0][:120].reshape(120, 64).astype(np.float32)
    np.savez(folder / "eval.npz", x=x, y=data.y_test[0][:120])
    k = keras()
    paths: list[Path] = []
    for index in range(count + 1):
        k.utils.set_random_seed(index)
        inputs = outputs = k.Input((64,))
        for width in hidden:
            outputs = k.layers.Dense(width, activation="relu")(outputs)
        model = k.Model(inputs, k.layers.Dense(10)(outputs))
        path = folder / (f"{prefix}{index:02d}.tflite" if index else "baseline.tflite")
        path.write_bytes(tf().lite.TFLiteConverter.from_keras_model(model).convert())
        paths.append(path)
    return paths[1:], paths[0], folder / "eval.npz"


# ---------------------------------------------------------------------------------------------------- the lab
def write_farm(folder: Path, boards: list[netns.LabBoard], **pool: Any) -> Path:
    """Two pools of four boards (a board type each), every board a target file of its own."""
    (folder / "targets").mkdir(parents=True, exist_ok=True)
    for board in boards:
        target = board_target(board, folder, MEASURE)
        (folder / "targets" / f"{board.name}.yaml").write_text(json.dumps(target))
    half = len(boards) // 2
    pools = {"rpi4": boards[:half], "jetson": boards[half:]}
    farm = {
        "name": "benchlab",
        "pools": {
            name: {"boards": [f"targets/{b.name}.yaml" for b in chosen], **pool} for name, chosen in pools.items()
        },
        "lease": {"ttl_s": 10, "heartbeat_s": 2},
    }
    path = folder / "lab.yaml"
    path.write_text(json.dumps(farm))
    return path


def write_labgrid_farm(folder: Path, boards: list[netns.LabBoard], coordinator: str) -> Path:
    """The same two pools as labgrid places found by tag: one target template, the address from each place."""
    folder.mkdir(parents=True, exist_ok=True)
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("".join(board.host.known_hosts.read_text() for board in boards))
    target = {
        "name": "labboard", "transport": "ssh", "host": "from-labgrid", "key": str(boards[0].host.key),
        "known_hosts": str(known_hosts), "python": sys.executable, "workdir": str(folder / "work" / "{place}"),
        "connect_timeout_s": 4, "connect_attempts": 1, "link_timeout_s": 6, "measure": MEASURE,
    }  # fmt: skip
    (folder / "labboard.yaml").write_text(json.dumps(target))
    farm = {
        "name": "benchlab",
        "labgrid": {"coordinator": coordinator},
        "pools": {tag: {"labgrid": {"tags": {"board": tag}, "target": "labboard.yaml"}} for tag in ("rpi4", "jetson")},
        "lease": {"ttl_s": 10, "heartbeat_s": 2},
    }
    path = folder / "lab.yaml"
    path.write_text(json.dumps(farm))
    return path


@contextmanager
def labgrid_places(folder: Path, boards: list[netns.LabBoard]) -> Iterator[str]:
    """A coordinator, an exporter publishing every board's NetworkService, a place per board tagged with its pool."""
    public = boards[0].host.key.with_suffix(".pub").read_text()
    for board in boards[1:]:  # one CI key on every board, as in a real lab
        with (board.host.known_hosts.parent / "authorized_keys").open("a") as keys:
            keys.write(public)
    with labgridlab.coordinator(folder) as address:
        groups = {
            b.name: {"NetworkService": {"address": b.host.address, "port": b.host.port, "username": b.host.user}}
            for b in boards
        }
        with labgridlab.exporter(address, folder, "rack1", groups):
            for index, board in enumerate(boards):
                place = f"place{index}"
                labgridlab.client(address, "-p", place, "create")
                labgridlab.client(address, "-p", place, "add-match", f"rack1/{board.name}/NetworkService")
                labgridlab.client(address, "-p", place, "set-tags", f"board={'rpi4' if index < 4 else 'jetson'}")
            yield address


def controller(folder: Path, history: Any, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGEPIPE_HISTORY": str(history)}
    return subprocess.Popen([sys.executable, "-m", "edgepipe", "farm", *args], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def finish(process: subprocess.Popen[str], seconds: float = 1800) -> tuple[int, str]:
    try:
        _out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
        return -9, f"did not finish within {seconds:.0f} s\n{err}"
    return process.returncode, err


# ------------------------------------------------------------------------------------------ what the rows say
def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def farm_rows(history: Any, runs: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict]]:
    """(run infos, attempts, jobs) of the given farm runs."""
    with FarmStore(history) as store:
        infos = [store.run_info(run) for run in runs]
        tried = [a for run in runs for a in store.attempts(run)]
        jobs = [j for run in runs for j in store.jobs(run)]
    return infos, tried, jobs


def latest_runs(history: Any, count: int) -> list[int]:
    with FarmStore(history) as store:
        return sorted(row["id"] for row in store.farm_runs(limit=count))


def board_overlaps(history: Any) -> tuple[int, int]:
    """(agent jobs, overlapping pairs on one board) from every record's board clock."""
    spans = board_intervals(history)
    overlaps = 0
    for intervals in spans.values():
        for (_, end), (start, _) in itertools.pairwise(sorted(intervals)):
            overlaps += start < end
    return sum(len(v) for v in spans.values()), overlaps


def duplicated_results(history: Any, jobs: list[dict[str, Any]]) -> int:
    """Results recorded more than once: a job with two records, or a record that no job points at."""
    with FarmStore(history) as store:
        recorded = {row.id for row in store.runs(limit=100000)}
    pointed = [j[key] for j in jobs for key in ("run_id", "baseline_run_id") if j[key] is not None]
    return (len(pointed) - len(set(pointed))) + len(recorded - set(pointed))


def bad_blobs(boards_root: Path) -> tuple[int, int, int]:
    """(files at final blob paths, of them whose sha256 is not their name, partial files left)."""
    finals = wrong = partial = 0
    for blob in boards_root.rglob("blobs/*"):
        if ".partial-" in blob.name:
            partial += 1
            continue
        finals += 1
        wrong += hashlib.sha256(blob.read_bytes()).hexdigest() != blob.name.split(".")[0]
    return finals, wrong, partial


# ------------------------------------------------------------------------------------------------ makespan
def makespan(folder: Path, boards: list[netns.LabBoard], models: list[Path], baseline: Path, data: Path,
             history: Any, controllers: int) -> list[tuple[str, ...]]:  # fmt: skip
    farm = write_farm(folder, boards)
    share = len(models) // controllers
    started = time.monotonic()
    processes = []
    for i in range(controllers):
        mine = map(str, models[i * share : (i + 1) * share])
        args = ["--data", str(data), "--baseline", str(baseline), *LENIENT, "--tag", f"bench-{i}", "--out", f"out-{i}"]
        processes.append(controller(folder, history, "run", str(farm), *mine, *args))
    ends = [finish(p) for p in processes]
    wall = time.monotonic() - started
    for code, err in ends:
        if code not in JUDGED:
            raise SystemExit(f"a controller failed (exit {code}):\n{err[-3000:]}")
    return schedule_figures(history, controllers, len(boards), wall)


def schedule_figures(history: Any, controllers: int, boards: int, wall: float | None) -> list[tuple[str, ...]]:
    """The makespan against the ideal and the overheads, from the history's rows of the last farm run(s)."""
    infos, tried, jobs = farm_rows(history, latest_runs(history, controllers))
    times = [seconds(a["finished"]) - seconds(a["started"]) for a in tried]
    ideal = sum(times) / boards
    begin = min(seconds(i["created"]) for i in infos)
    span = max(seconds(a["finished"]) for a in tried) - begin
    gaps, first = [], []
    by_board = sorted(tried, key=lambda a: (a["board"], a["started"]))
    for _board, mine in itertools.groupby(by_board, lambda a: a["board"]):
        ordered = list(mine)
        first.append(seconds(ordered[0]["started"]) - begin)
        gaps += [seconds(b["started"]) - seconds(a["finished"]) for a, b in itertools.pairwise(ordered)]
    agent_jobs, overlaps = board_overlaps(history)
    where = "SQLite" if controllers == 1 else "PostgreSQL"
    outcomes = ", ".join(f"{o} {sum(j['outcome'] == o for j in jobs)}" for o in sorted(OUTCOMES) if any(
        j["outcome"] == o for j in jobs))  # fmt: skip
    return [
        (f"{controllers} controller(s), {where}", "jobs", str(len(jobs)), f"attempts {len(tried)}; {outcomes}"),
        ("", "job time (s)", f"{np.mean(times):.2f} mean", f"{min(times):.2f}-{max(times):.2f}"),
        ("", "ideal (sum / 8)", f"{ideal:.1f} s", ""),
        ("", "makespan", f"{span:.1f} s", f"{span / ideal:.3f}x ideal"),
        ("", "controller wall", f"{wall or 0:.1f} s", f"{(wall or 0) / ideal:.3f}x ideal (with start-up and report)"),
        ("", "gap between a board's jobs", f"{np.mean(gaps):.3f} s mean", f"max {max(gaps):.2f} s"),
        ("", "first job after creation", f"{np.mean(first):.2f} s mean", f"max {max(first):.2f} s (health check)"),
        ("", "overhead per job", f"{(span * boards - sum(times)) / len(jobs):.3f} s", "(makespan x 8 - sum)/jobs"),
        ("", "double bookings", str(overlaps), f"of {agent_jobs} agent jobs (board clocks)"),
    ]


# ------------------------------------------------------------------------------------------------ link cuts
def link_cuts(folder: Path, boards: list[netns.LabBoard], models: list[Path], baseline: Path, data: Path,
              cuts_wanted: int) -> list[tuple[str, ...]]:  # fmt: skip
    """Farm runs on SQLite while a chaos thread unplugs the cable of a board that is measuring, until
    ``cuts_wanted`` cuts were made; uploads throttled so a cut can land in one."""
    farm = write_farm(folder, boards, attempts=4, quarantine_after=3)
    history = folder / "history.sqlite"
    for board in boards:
        board.cable.limit("4mbit")
    rng = random.Random(7)
    cuts: list[tuple[str, float]] = []
    runs = 0
    codes: list[int] = []
    try:
        while len(cuts) < cuts_wanted:
            runs += 1
            tag = f"cuts-{runs}"
            process = controller(folder, history, "run", str(farm), *map(str, models), "--data", str(data),
                                 "--baseline", str(baseline), *LENIENT, "--tag", tag, "--out", tag)  # fmt: skip
            stop = threading.Event()
            chaos = threading.Thread(target=_chaos, args=(history, boards, rng, cuts, cuts_wanted, stop))
            chaos.start()
            code, err = finish(process)
            stop.set()
            chaos.join()
            codes.append(code)
            if code not in (0, 7, 10, 17):
                raise SystemExit(f"the controller failed (exit {code}):\n{err[-3000:]}")
    finally:
        for board in boards:
            board.cable.plug()
            board.cable.unlimit()
    _infos, tried, jobs = farm_rows(history, latest_runs(history, runs))
    unended = [j for j in jobs if j["state"] != "done" or j["outcome"] not in OUTCOMES]
    lost = [j for j in jobs if j["outcome"] in ("pass", "regression", "inconclusive") and j["run_id"] is None]
    finals, wrong, partial = bad_blobs(folder / "work")
    failures = [a for a in tried if a["outcome"] == "infra-error"]
    kinds: dict[str, int] = {}
    for attempt in failures:
        kinds[attempt["error_class"]] = kinds.get(attempt["error_class"], 0) + 1
    outcomes = {o: sum(j["outcome"] == o for j in jobs) for o in sorted(OUTCOMES)}
    return [
        ("link cuts", "cuts made", str(len(cuts)), f"in {runs} farm run(s), exits {codes}"),
        ("", "jobs", str(len(jobs)), ", ".join(f"{k} {v}" for k, v in outcomes.items() if v)),
        ("", "failed attempts", str(len(failures)), ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))),
        ("", "jobs without an end or outcome", str(len(unended)), ""),
        ("", "results lost", str(len(lost)), "(a passed job without its record)"),
        ("", "results recorded twice", str(duplicated_results(history, jobs)), ""),
        ("", "bad files at final blob paths", str(wrong), f"of {finals}; {partial} partial file(s) left aside"),
    ]


def _chaos(history: Path, boards: list[netns.LabBoard], rng: random.Random, cuts: list[tuple[str, float]],
           wanted: int, stop: threading.Event) -> None:  # fmt: skip
    """Unplug a measuring board's cable for 2-12 s, every 1-4 s, until ``wanted`` cuts or ``stop``."""
    by_name = {b.name: b for b in boards}
    pending: list[tuple[float, netns.LabBoard]] = []
    while not stop.is_set():
        now = time.monotonic()
        for when, board in [p for p in pending if p[0] <= now]:
            board.cable.plug()
            pending.remove((when, board))
        if len(cuts) < wanted and not stop.wait(rng.uniform(1, 4)):
            try:
                with FarmStore(history) as store:
                    run = max(r["id"] for r in store.farm_runs(limit=1))
                    busy = [r["board"] for r in store.boards(run) if r["state"] == "measuring"]
            except Exception:  # the controller has not created its tables yet
                continue
            busy = [name for name in busy if all(b.name != name for _, b in pending)]
            if busy:
                board = by_name[rng.choice(busy)]
                board.cable.unplug()
                cuts.append((board.name, time.time()))
                pending.append((time.monotonic() + rng.uniform(2, 12), board))
        else:
            stop.wait(0.2)
    for _, board in pending:
        board.cable.plug()


# ---------------------------------------------------------------------------------------------- SIGKILLs
def kills(folder: Path, boards: list[netns.LabBoard], models: list[Path], baseline: Path, data: Path,
          server: str, rounds: int) -> list[tuple[str, ...]]:  # fmt: skip
    """``rounds`` farm runs, each controller SIGKILLed at another moment, then finished by ``farm resume``;
    SQLite and PostgreSQL histories alternate."""
    farm = write_farm(folder, boards)
    moments = np.linspace(0.5, 20, rounds)
    lost = doubled = abandoned = resumed_by_run = 0
    details = []
    for index, moment in enumerate(moments):
        history: Any = folder / f"kill-{index}.sqlite" if index % 2 == 0 else postgres.new_database(server)
        args = ["run", str(farm), *map(str, models), "--data", str(data), "--baseline", str(baseline), *LENIENT,
                "--tag", f"kill-{index}", "--out", f"kill-{index}"]  # fmt: skip
        process = controller(folder, history, *args)
        time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        runs = latest_runs(history, 1) if _has_tables(history) else []
        if runs:
            code, err = finish(controller(folder, history, "resume", str(runs[0])))
        else:  # killed before it created its farm run: the same command again
            code, err = finish(controller(folder, history, *args))
            resumed_by_run += 1
        if code not in (0, 7, 17):
            raise SystemExit(f"resume failed (exit {code}):\n{err[-3000:]}")
        _infos, tried, jobs = farm_rows(history, latest_runs(history, 1))
        lost += sum(j["state"] != "done" or j["run_id"] is None for j in jobs)
        doubled += duplicated_results(history, jobs)
        abandoned += sum(a["outcome"] == "abandoned" for a in tried)
        done_twice = len([a for a in tried if a["outcome"] == "done"]) - len(jobs)
        doubled += max(done_twice, 0)
        details.append(f"{moment:.1f}s:{sum(a['outcome'] == 'abandoned' for a in tried)}")
    return [
        (
            "controller SIGKILLs",
            "kills + resume",
            str(rounds),
            f"SQLite and PostgreSQL alternating; {resumed_by_run} died before creating the run",
        ),
        ("", "kill moment: abandoned attempts", " ".join(details), ""),
        ("", "jobs lost", str(lost), ""),
        ("", "results recorded twice", str(doubled), ""),
        ("", "attempts abandoned and rerun", str(abandoned), ""),
    ]


def _has_tables(history: Any) -> bool:
    if isinstance(history, Path) and not history.exists():
        return False
    try:
        with FarmStore(history) as store:
            return bool(store.farm_runs(limit=1))
    except Exception:
        return False


# ------------------------------------------------------------------------------------- double bookings
def double_bookings(folder: Path, boards: list[netns.LabBoard], models: list[Path], baseline: Path, data: Path,
                    history: str, farm: Path) -> tuple[int, int, int]:  # fmt: skip
    """Two controllers with half the models each on one history: (codes ok, agent jobs, overlaps)."""
    half = len(models) // 2
    processes = []
    for i, part in enumerate((models[:half], models[half:])):
        args = ["--data", str(data), "--baseline", str(baseline), *LENIENT, "--tag", f"two-{i}", "--out", f"two-{i}"]
        processes.append(controller(folder, history, "run", str(farm), *map(str, part), *args))
    ends = [finish(p) for p in processes]
    for code, err in ends:
        if code not in JUDGED:
            raise SystemExit(f"a controller failed (exit {code}):\n{err[-3000:]}")
    agent_jobs, overlaps = board_overlaps(history)
    return len(ends), agent_jobs, overlaps


FAULTS = ("cuts", "kills", "bookings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="*", choices=FAULTS, help="the fault counts (all, or the parts named)")
    parser.add_argument("--jobs", type=int, default=64, help="jobs of a makespan run (models x 2 pools)")
    parser.add_argument("--cuts", type=int, default=20)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    for reason in (netns.available(), postgres.available()):
        if reason:
            raise SystemExit(f"bench/farm.py: {reason}")
    out = ROOT / "bench" / "out" / "farm"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    header = ("experiment", "what", "figure", "")
    parts = set(args.faults or FAULTS) if args.faults is not None else set()
    with netns.lab(out / "lab", BOARDS) as boards, postgres.server() as server:
        if not parts:
            models, baseline, data = make_models(out / "models", args.jobs // 2, [256], "m")
            print_table(
                header, makespan(out / "one", boards, models, baseline, data, out / "one" / "history.sqlite", 1)
            )
            print_table(header, makespan(out / "two", boards, models, baseline, data, postgres.new_database(server), 2))
            return
        models, baseline, data = make_models(out / "models", 16, [256], "m")
        if "cuts" in parts:
            big, big_baseline, _ = make_models(out / "big", 32, [512, 512], "b")  # 1.2 MB: uploads take seconds
            print_table(header, link_cuts(out / "cuts", boards, big, big_baseline, data, args.cuts))
        if "kills" in parts:
            print_table(header, kills(out / "kills", boards, models[:8], baseline, data, server, args.kills))
        if "bookings" in parts:
            pg_farm = write_farm(out / "pg", boards)
            _, agent_jobs, overlaps = double_bookings(out / "pg", boards, models, baseline, data,
                                                      postgres.new_database(server), pg_farm)  # fmt: skip
            rows = [("2 controllers, PostgreSQL", "double bookings", str(overlaps), f"of {agent_jobs} agent jobs")]
            with labgrid_places(out / "labgrid", boards) as address:
                lg_farm = write_labgrid_farm(out / "lg", boards, address)
                _, agent_jobs, overlaps = double_bookings(out / "lg", boards, models, baseline, data,
                                                          postgres.new_database(server), lg_farm)  # fmt: skip
            rows.append(("2 controllers, labgrid", "double bookings", str(overlaps), f"of {agent_jobs} agent jobs"))
            print_table(header, rows)


if __name__ == "__main__":
    main()
