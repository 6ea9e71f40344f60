"""Shared fixtures: the digits data, a tiny trained model, and writing recipes to temporary files.

Everything here is real: scikit-learn's digits, tf_keras training, TF-MOT, the LiteRT interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


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

    keras().utils.set_random_seed(0)
    model = mlp(hidden=64)
    models.train(model, digits, TrainSettings(epochs=20, learning_rate=0.003), Progress(), "baseline")
    return model


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
