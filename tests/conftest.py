"""Shared fixtures: the digits data, a tiny trained model, and writing recipes to temporary files.

Everything here is real: scikit-learn's digits, tf_keras training, TF-MOT, the LiteRT interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def private_history(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Nothing the tests do lands in the user's home: deploys record into a throwaway results history, the
    local target's board directory and the emulator images live in the session's temporary directory."""
    import os

    private = {
        "EDGEPIPE_HISTORY": str(tmp_path_factory.mktemp("history") / "history.sqlite"),
        "EDGEPIPE_LOCAL_WORKDIR": str(tmp_path_factory.mktemp("local-board")),
        "EDGEPIPE_EMULATOR_DIR": str(tmp_path_factory.mktemp("emulator-images")),
    }
    previous = {name: os.environ.get(name) for name in private}
    os.environ.update(private)
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def digits() -> Any:
    from edgepipe.examples.digits import load

    return load()


@pytest.fixture(scope="session")
def trained_mlp(digits: Any) -> Any:
    """A 64-unit MLP trained for 20 epochs (about 3 s); tests must not modify it (use models.copy_model)."""
    from edgepipe import models
    from edgepipe.config import TrainSettings
    from edgepipe.examples.digits import mlp
    from edgepipe.keras_compat import keras
    from edgepipe.progress import Progress
    from edgepipe.tasks import Task

    keras().utils.set_random_seed(0)
    model = mlp(hidden=64)
    models.train(model, digits, TrainSettings(epochs=20, learning_rate=0.003), Progress(), "baseline", Task.of(model))
    return model


TINY = """
name: tiny-chain
model: {source: edgepipe.examples.digits:tiny_mlp, train: {epochs: 15, learning_rate: 0.005}}
data: {source: edgepipe.examples.digits:load}
fine_tune: {epochs: 2, learning_rate: 0.0005}
stages:
  - kind: prune
    target_sparsity: 0.5
  - kind: cluster
    clusters: 16
  - kind: qat
convert: {representative_samples: 64}
gates: {max_accuracy_drop: 10}
"""


@pytest.fixture(scope="session")
def optimized_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A run directory of ``edgepipe optimize`` (prune -> cluster -> PCQAT on a tiny MLP); treat it as read-only."""
    from edgepipe.optimization import pipeline

    folder = tmp_path_factory.mktemp("run")
    outcome = pipeline.run(pipeline.prepare(write_recipe(folder, TINY)), folder / "out")
    return outcome.directory, outcome.result


# Models that are not one-input, one-output classifiers (edgepipe/examples/tasks.py), each compressed briefly;
# the QAT stage distills from the float model (each output from the teacher's same output).
TASK_RECIPES = {
    "autoencoder": """
name: autoencoder
task: reconstruction
model: {source: edgepipe.examples.tasks:autoencoder, train: {epochs: 15, learning_rate: 0.003}}
data: {source: edgepipe.examples.tasks:flat_digits}
fine_tune: {epochs: 1, learning_rate: 0.0005}
stages:
  - {kind: prune, target_sparsity: 0.5}
  - {kind: qat, fine_tune: {distill: {alpha: 0.5}}}
convert: {representative_samples: 64}
gates: {max_error_increase: 1.0}
""",
    "two_heads": """
name: two-heads
model: {source: edgepipe.examples.tasks:two_heads, train: {epochs: 6, learning_rate: 0.003}}
data: {source: edgepipe.examples.tasks:two_heads_data}
fine_tune: {epochs: 1, learning_rate: 0.0005}
stages:
  - {kind: prune, target_sparsity: 0.5}
  - {kind: qat, fine_tune: {distill: {temperature: 2, alpha: 0.5}}}
convert: {representative_samples: 64}
gates: {max_accuracy_drop: 20}
""",
}


@pytest.fixture(scope="session")
def task_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Run directories of the autoencoder (reconstruction) and the two-input, two-output classifier."""
    from edgepipe.optimization import pipeline

    runs = {}
    for name, body in TASK_RECIPES.items():
        folder = tmp_path_factory.mktemp(name)
        outcome = pipeline.run(pipeline.prepare(write_recipe(folder, body)), folder / "run")
        runs[name] = (outcome.directory, outcome.result)
    return runs


def channel_prune_qat(name: str, model: str) -> str:
    """A recipe: 50 % channel pruning then QAT on the digits, one-epoch fine-tunes, no accuracy gate (for tests
    of what the stages do to a model's structure, not of its accuracy). ``model`` is the recipe's model entry."""
    return f"""
name: {name}
model: {model}
data: {{source: edgepipe.examples.digits:load}}
fine_tune: {{epochs: 1, learning_rate: 0.001}}
stages:
  - {{kind: channel_prune, ratio: 0.5, round_to: 4}}
  - {{kind: qat}}
convert: {{representative_samples: 64}}
gates: {{max_accuracy_drop: null}}
"""


def qat_of(folder: Path, models: str, function: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``models`` written as ``models.py``, its ``function`` trained 3 epochs on the digits and then one QAT stage,
    through the CLI into ``folder / "run"``: what optimize said, and the stage's details."""
    (folder / "models.py").write_text(models)
    recipe = f"""
    name: {function}
    model: {{source: "models:{function}", train: {{epochs: 3, learning_rate: 0.003}}}}
    data: {{source: edgepipe.examples.digits:load}}
    fine_tune: {{epochs: 1, learning_rate: 0.0005}}
    stages: [{{kind: qat}}]
    gates: {{max_accuracy_drop: null}}
    """
    done = run_cli("optimize", str(write_recipe(folder, recipe)), "--out", str(folder / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((folder / "run" / "optimize.json").read_text())["stages"][0]["details"]


def write_recipe(folder: Path, body: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "edgepipe", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def weights_digest(model: Any) -> list[np.ndarray]:
    return [np.array(w, copy=True) for w in model.get_weights()]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """OpenSSH's sshd on 127.0.0.1 with fresh host and user keys: the "board" of the SSH tests."""
    from edgepipe.transport.loopback import LoopbackSshd

    with LoopbackSshd(tmp_path_factory.mktemp("sshd")) as host:
        yield host


@pytest.fixture
def loopback_env(sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The EDGEPIPE_LOOPBACK_* values of ``targets/loopback.yaml`` for this test (own board directory)."""
    import os

    env = {
        "EDGEPIPE_LOOPBACK_PORT": str(sshd.port),
        "EDGEPIPE_LOOPBACK_USER": sshd.user,
        "EDGEPIPE_LOOPBACK_KEY": str(sshd.key),
        "EDGEPIPE_LOOPBACK_KNOWN_HOSTS": str(sshd.known_hosts),
        "EDGEPIPE_LOOPBACK_PYTHON": sys.executable,
        "EDGEPIPE_LOOPBACK_BOOTSTRAP_PYTHON": os.path.realpath(sys.executable),
        "EDGEPIPE_LOOPBACK_WORKDIR": str(tmp_path / "board"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """A PostgreSQL server of this test session (tests/postgres.py); CI installs Debian's postgresql."""
    import postgres

    reason = postgres.available()
    if reason:
        pytest.fail(f"the PostgreSQL tests need a server: {reason}")
    with postgres.server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def history_location(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A fresh, empty results history on each backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "history.sqlite"
    import postgres

    return postgres.new_database(request.getfixturevalue("postgres_server"))
