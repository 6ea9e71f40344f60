"""The results history: concurrent writers, runs that never finished, lookups, and deploys recording into it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from edgepipe.database import as_location
from edgepipe.errors import ConfigError
from edgepipe.store import History


def fake_record(target: str, sha: str, p50: float, samples: int = 5) -> dict[str, Any]:
    """The shape of a deploy record, as much as the store reads (real deploys are tested below)."""
    return {
        "status": "passed",
        "target": {"name": target},
        "model": {"sha256": sha, "bytes": 1234, "model": "m.tflite", "recipe": "r"},
        "device": {
            "agent_version": "1.0.0",
            "runtime": {"name": "ai_edge_litert", "version": "2.3.0"},
            "board": {"machine": "x86_64", "emulated": False},
            "timing": {"latency_ms": {"p50": p50, "p99": p50 * 2}, "samples_ms": [p50] * samples},
            "accuracy": {"accuracy": 0.9},
            "memory": {"vmhwm_kb": {"after_runs": 4096}},
        },
    }


def _writer(path: str, worker: int, count: int) -> list[int]:
    with History(as_location(path)) as store:
        return [
            store.add(fake_record(f"board-{worker}", f"{worker:02d}{i:062d}", 1.0 + i), ["farm"]) for i in range(count)
        ]


def test_concurrent_writers_lose_nothing(history_location: Any) -> None:
    path = history_location
    with ProcessPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(_writer, [str(path)] * 4, range(4), [25] * 4) for i in batch]
    assert len(ids) == len(set(ids)) == 100
    with History(path) as store:
        rows = store.runs(limit=1000)
        assert len(rows) == 100 and all(row.complete and row.tags == ("farm",) for row in rows)
        assert {row.target for row in rows} == {f"board-{w}" for w in range(4)}
        assert store.record(ids[-1])["device"]["timing"]["samples_ms"] == [25.0] * 5  # 1.0 + 24


def test_a_run_killed_before_it_finished_is_not_shown_as_complete(history_location: Any) -> None:
    path = history_location
    script = (
        "import os, sys; from edgepipe.database import as_location; from edgepipe.store import History;"
        "h = History(as_location(sys.argv[1])); print(h.start('rpi4', 'ab' * 32, 'm.tflite', ['main']), flush=True);"
        "os.kill(os.getpid(), 9)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True)
    assert done.returncode == -9
    run_id = int(done.stdout)
    with History(path) as store:
        assert store.runs() == [] and store.runs(tag="main") == []
        (row,) = store.runs(include_incomplete=True)
        assert row.id == run_id and not row.complete and row.status == "running"
        with pytest.raises(ConfigError, match="did not complete"):
            store.record(run_id)


def test_lookup_by_target_tag_and_model(history_location: Any) -> None:
    with History(history_location) as store:
        first = store.add(fake_record("rpi4", "aa" * 32, 2.0), ["main"])
        second = store.add(fake_record("rpi4", "bb" * 32, 3.0), ["feature-x"])
        store.add(fake_record("local", "aa" * 32, 0.1))
        assert [r.id for r in store.runs(target="rpi4")] == [second, first]
        assert [r.id for r in store.runs(target="rpi4", tag="main")] == [first]
        assert [r.target for r in store.runs(model="aaaa")] == ["local", "rpi4"]
        store.tag(second, ["main", "abc1234"])
        assert store.runs(target="rpi4", tag="main")[0].id == second
        assert store.runs(tag="abc1234")[0].tags == ("abc1234", "feature-x", "main")
        with pytest.raises(ConfigError, match="no run 99"):
            store.tag(99, ["x"])


def test_unusable_files_are_config_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match="not a usable results history"):
        History(garbage)
    newer = tmp_path / "newer.sqlite"
    History(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(ConfigError, match="schema 99"):
        History(newer)


@pytest.mark.slow
def test_deploys_are_recorded_with_raw_samples_failures_included(
    optimized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    directory, _ = optimized_run
    env = {"EDGEPIPE_HISTORY": str(tmp_path / "h.sqlite"), "EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")}
    run_copy = tmp_path / "run"
    shutil.copytree(directory, run_copy)
    done = run_cli("deploy", str(run_copy), "--tag", "main", "--tag", "abc1234", env=env)
    assert done.returncode == 0 and "recorded as run 1 tagged main, abc1234" in done.stdout
    broken = tmp_path / "broken.tflite"
    broken.write_bytes((directory / "model.tflite").read_bytes()[:64])
    assert run_cli("deploy", "--model", str(broken), env=env).returncode == 21
    with History(tmp_path / "h.sqlite") as store:
        failed, passed = store.runs(include_incomplete=True)
        assert (passed.status, failed.status, failed.error_class) == ("passed", "failed", "InvalidModel")
        assert passed.tags == ("abc1234", "main") and failed.complete
        record = store.record(passed.id)
    on_disk = json.loads((run_copy / "deploy-local.json").read_text())
    assert record == on_disk and record["history"]["run_id"] == passed.id
    assert len(record["device"]["timing"]["samples_ms"]) == record["device"]["timing"]["latency_ms"]["count"]
    listing = run_cli("history", "--target", "local", env=env)
    assert listing.returncode == 0 and "passed" in listing.stdout and "InvalidModel" in listing.stdout
    shown = run_cli("history", "--show", str(passed.id), env=env)
    assert json.loads(shown.stdout)["model"]["sha256"] == passed.model_sha256


def test_the_cli_records_into_and_reads_from_postgresql(postgres_server: str, tmp_path: Path) -> None:
    """``--history postgresql://...`` on deploy, history and compare (a URL, not a file name)."""
    import postgres

    from edgepipe.keras_compat import keras, tf

    k = keras()
    inputs = k.Input((8,))
    model = tmp_path / "m.tflite"
    model.write_bytes(tf().lite.TFLiteConverter.from_keras_model(k.Model(inputs, k.layers.Dense(2)(inputs))).convert())
    url = postgres.new_database(postgres_server)
    env = {"EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")}
    quick = ("--runs", "20", "--min-seconds", "0", "--repeats", "2")
    # the second deploy is timed against the first (found by its tag in PostgreSQL), so the verdict is paired
    for tag, extra in (("main", ()), ("pr", ("--baseline", "main"))):
        done = run_cli("deploy", "--target", "local", "--model", str(model), *quick, "--tag", tag, "--history", url,
                       *extra, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
    listed = run_cli("history", "--history", url)
    assert listed.returncode == 0 and "2 run(s) in postgresql://" in listed.stdout, listed.stderr
    judged = run_cli("compare", "--baseline", "main", "--candidate", "pr", "--target", "local", "--history", url)
    assert judged.returncode == 0 and "paired in one job" in judged.stdout, judged.stdout + judged.stderr
    assert not (tmp_path / "postgresql:").exists() and not Path("postgresql:").exists()
