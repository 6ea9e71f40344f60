"""``pip install edgepipe`` from a wheel: the agent, the targets and the presets travel with it.

The wheel is built from a copy of the source (as pip does for ``pip install .``), installed with ``--no-deps``
into a fresh virtual environment, and used from a directory that has no ``targets/`` or ``recipes/``: a preset
optimized by name, then deployed to ``local``. The heavy dependencies (TensorFlow, TF-MOT, LiteRT) are not
downloaded again: the fresh environment sees the locked set-up's site-packages through a ``.pth`` line, which
adds them to ``sys.path`` after its own (their ``.pth`` files, among them the editable install's finder, are
not run), so ``import edgepipe`` can only find the wheel's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from edgepipe.deployment.agent import agent_sources

pytestmark = pytest.mark.slow

LEFT_OUT = {".venv", ".git", "runs", "build", "tests", "test-artifacts", "bench", ".pytest_cache", ".ruff_cache"}


def _run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with edgepipe installed from a freshly built wheel; returns its bin directory."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(
        REPO, source, ignore=lambda folder, names: [n for n in names if n in LEFT_OUT or n.endswith(".egg-info")]
    )
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source, cwd=work)
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("edgepipe-*.whl")
    venv = work / "venv"
    created = _run(sys.executable, "-m", "venv", venv, cwd=work)
    assert created.returncode == 0, created.stderr
    fresh_site = next((venv / "lib").glob("python3*/site-packages"))
    (fresh_site / "locked-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "-q", wheel, cwd=work)
    assert installed.returncode == 0, installed.stderr
    return venv / "bin"


def test_the_wheel_carries_the_agent_targets_and_presets(wheel_env: Path, tmp_path: Path) -> None:
    where = _run(
        wheel_env / "python", "-c", "import edgepipe, edgepipe.shipped as s; print(s.folder('targets'))", cwd=tmp_path
    )
    assert where.returncode == 0, where.stderr
    assert "site-packages/edgepipe/_shipped/targets" in where.stdout, "edgepipe was not imported from the wheel"
    targets = _run(wheel_env / "edgepipe", "targets", "list", cwd=tmp_path)
    assert targets.returncode == 0, targets.stderr
    assert all(name in targets.stdout for name in ("local", "rpi4", "rpi4-emu"))
    presets = _run(wheel_env / "edgepipe", "recipes", "list", cwd=tmp_path)
    assert presets.returncode == 0 and "prune-cluster-qat" in presets.stdout, presets.stderr


def test_a_preset_optimized_by_name_deploys_from_the_wheel(wheel_env: Path, tmp_path: Path) -> None:
    env = {"EDGEPIPE_LOCAL_WORKDIR": str(tmp_path / "board")}
    optimized = _run(wheel_env / "edgepipe", "optimize", "ptq-int8", "--out", "run", "--quiet", cwd=tmp_path, env=env)
    assert optimized.returncode == 0, optimized.stderr
    deployed = _run(
        wheel_env / "edgepipe", "deploy", "run", "--target", "local", "--runs", "20", "--repeats", "1", "--no-history",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    result = json.loads((tmp_path / "run" / "deploy-local.json").read_text())
    assert result["status"] == "passed"
    assert result["checks"]["device_accuracy"] == result["checks"]["host_accuracy"] > 0.9
    agents = list((tmp_path / "board" / "agent").glob("edgepipe_agent-*.pyz"))
    assert len(agents) == 1  # the one file the board gets holds the repository's agent source, file for file
    with zipfile.ZipFile(agents[0]) as archive:
        sent = {name: archive.read(name) for name in archive.namelist()}
    source = REPO / "device_agents"
    assert sent == {p.relative_to(source).as_posix(): p.read_bytes() for p in agent_sources(source)}
    assert "edgepipe_agent/supervisor.py" in sent
