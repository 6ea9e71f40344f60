"""What the farm tests share: the small models they measure and the controller they run through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.farm.store import FarmStore

QUICK = {"runs": 30, "min_seconds": 0.2, "repeats": 2, "time_limit_s": 120}


def make_models(folder: Path) -> dict[str, Path]:
    """Float models of the digits' shape: small (µs per inference), wide (~30x its work), slow (three 32-channel
    convolutions over 64x64: about a millisecond even on a fast x86 core, so a measurement of some seconds stays
    under the agent's max_runs and min_seconds decides how long it lasts), and evaluation data."""
    from edgepipe.examples.digits import load
    from edgepipe.keras_compat import keras, tf

    k = keras()
    k.utils.set_random_seed(0)
    data = load()
    np.savez(folder / "eval.npz", x=data.x_test[0][:120].reshape(120, 64).astype(np.float32), y=data.y_test[0][:120])
    for name, widths in (("small", [16]), ("wide", [512])):
        inputs = outputs = k.Input((64,))
        for width in widths:
            outputs = k.layers.Dense(width, activation="relu")(outputs)
        model = k.Model(inputs, k.layers.Dense(10)(outputs))
        (folder / f"{name}.tflite").write_bytes(tf().lite.TFLiteConverter.from_keras_model(model).convert())
    inputs = k.Input((64,))
    image = k.layers.Reshape((64, 64, 1))(k.layers.Dense(64 * 64, activation="relu")(inputs))
    for _ in range(3):
        image = k.layers.Conv2D(32, 3, padding="same", activation="relu")(image)
    model = k.Model(inputs, k.layers.Dense(10)(k.layers.GlobalAveragePooling2D()(image)))
    (folder / "slow.tflite").write_bytes(tf().lite.TFLiteConverter.from_keras_model(model).convert())
    (folder / "copy").mkdir()
    (folder / "copy" / "small.tflite").write_bytes((folder / "small.tflite").read_bytes())
    (folder / "broken.tflite").write_bytes((folder / "small.tflite").read_bytes()[:200])
    return {"small": folder / "small.tflite", "wide": folder / "wide.tflite", "slow": folder / "slow.tflite",
            "data": folder / "eval.npz",
            "copy": folder / "copy" / "small.tflite", "broken": folder / "broken.tflite"}  # fmt: skip


def board_target(board: Any, folder: Path, measure: dict[str, Any]) -> dict[str, Any]:
    """The target file of a lab board (tests/netns.py): SSH to its sshd with its own key and known_hosts, short
    timeouts (a cut cable is noticed in seconds), its workdir under ``folder``."""
    return {
        "name": board.name, "transport": "ssh", "host": board.host.address, "port": board.host.port,
        "user": board.host.user, "key": str(board.host.key), "known_hosts": str(board.host.known_hosts),
        "python": sys.executable, "workdir": str(folder / "work" / board.name), "connect_timeout_s": 4,
        "connect_attempts": 1, "link_timeout_s": 6, "measure": measure,
    }  # fmt: skip


def farm_cli(folder: Path, *args: str, history: Any = None) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGEPIPE_HISTORY": str(history or folder / "history.sqlite")}
    return subprocess.Popen(
        [sys.executable, "-m", "edgepipe", "farm", *args], cwd=folder, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(process: subprocess.Popen[str], seconds: float = 300) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()  # a controller that hangs must not outlive its test
        out, err = process.communicate()
        raise AssertionError(f"the controller did not finish within {seconds:.0f} s:\n{err[-3000:]}") from None
    return process.returncode, out, err


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def attempts(folder: Path, run: int = 1, history: Any = None) -> list[dict[str, Any]]:
    path = history or folder / "history.sqlite"
    if isinstance(path, Path) and not path.exists():
        return []
    with FarmStore(path) as store:
        try:
            return store.attempts(run)
        except Exception:
            return []


def board_intervals(history: Any) -> dict[str, list[tuple[float, float]]]:
    """Every agent job's start and end as the board's clock saw them, per board, from the history's records."""
    with FarmStore(history) as store:
        records = [store.record(row.id) for row in store.runs(limit=100000)]
    spans: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        clock = record["device"]["clock"]
        spans.setdefault(record["target"]["name"], []).append((clock["started"], clock["finished"]))
    return spans
