"""The acceptance's bad inputs, through the real command: one line, distinct exit code, no traceback, no run dir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli, write_recipe
from test_config import GOOD

BAD = {
    "unknown field": (GOOD.replace("target_sparsity", "target_sparsty"), "stages[0].target_sparsty"),
    "wrong type": (GOOD.replace("target_sparsity: 0.5", "target_sparsity: lots"), "stages[0].target_sparsity"),
    "missing model file": (GOOD.replace("edgepipe.examples.digits:tiny_mlp", "missing.keras"), "model.source"),
    "npz lacking y_test": (GOOD.replace("edgepipe.examples.digits:load", "d.npz"), "data.source"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_fails_cleanly(tmp_path: Path, case: str) -> None:
    x = np.zeros((4, 8, 8, 1), np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(4, int), x_test=x)
    body, field = BAD[case]
    recipe = write_recipe(tmp_path, body)
    out = tmp_path / "run"
    result = run_cli("optimize", str(recipe), "--out", str(out))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert str(recipe) in errors[0] and field in errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()
    assert not list(tmp_path.glob(".run.partial-*"))


def test_missing_recipe_file(tmp_path: Path) -> None:
    result = run_cli("optimize", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: file not found" in result.stderr and "one of the presets: channel-prune" in result.stderr
    first = run_cli("optimize", cwd=tmp_path)  # a new user's first try: no recipe named, none here
    assert first.returncode == 2 and f"no recipe named, and no edgepipe.yaml in {tmp_path}" in first.stderr
    assert "edgepipe optimize prune-cluster-qat" in first.stderr and "Traceback" not in first.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_and_import_do_not_load_tensorflow() -> None:
    probe = "import sys, edgepipe, edgepipe.cli, edgepipe.config; print('tensorflow' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
    help_probe = (
        "import sys\nfrom edgepipe.cli import app\n"
        "try:\n    app(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "print('TF' if 'tensorflow' in sys.modules else 'no TF')"
    )
    result = subprocess.run([sys.executable, "-c", help_probe], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip().endswith("no TF") and "optimize" in result.stdout


USAGE_MISTAKES = {
    "no arguments": [],
    "unknown option": ["--bogus"],
    "unknown command": ["nosuchcommand"],
    "not a number": ["deploy", "--runs", "abc"],
    "option without its value": ["deploy", "--target"],
    "unknown sub-command option": ["targets", "check", "--bogus"],
}


@pytest.mark.parametrize("case", sorted(USAGE_MISTAKES))
def test_usage_mistakes_give_a_usage_line_and_exit_2(case: str) -> None:
    result = run_cli(*USAGE_MISTAKES[case])
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    shown = result.stderr + result.stdout
    assert "Usage: edgepipe" in shown, shown
    if USAGE_MISTAKES[case]:
        assert "Error:" in shown and "--help" in shown


def test_version_option() -> None:
    from edgepipe import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"edgepipe {__version__}"


def test_an_unexpected_exception_is_an_internal_error_not_a_usage_error(tmp_path: Path) -> None:
    """A bug (not an EdgepipeError, not a usage mistake) keeps its traceback and exits 70."""
    probe = (
        "import importlib; m = importlib.import_module('edgepipe.cli.main')\n"
        "def broken():\n    raise ZeroDivisionError('bug')\n"
        "m.app.command('broken')(broken)\n"
        "import sys; sys.argv = ['edgepipe', 'broken']\nm.main()\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 70, result.stderr
    assert "ZeroDivisionError: bug" in result.stderr and "internal error" in result.stderr


@pytest.mark.parametrize("value", ["-3", "0", "nan", "inf"])
def test_a_deadline_that_is_not_a_positive_duration_is_a_usage_error(value: str, tmp_path: Path) -> None:
    result = run_cli("deploy", "--target", "local", str(tmp_path), "--deadline", value)
    assert result.returncode == 2, result.stderr
    assert "--deadline" in result.stderr and "not a positive number of seconds" in result.stderr
    assert "Usage: edgepipe deploy" in result.stderr


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({}, "needs arrays x and y"),
        ({"x": np.array(["a", "b"]), "y": np.array([1, 2])}, "x: expected numeric samples"),
        ({"x": np.array(3.0), "y": np.array(1)}, "x: holds a single number, not one value per sample"),
    ],
    ids=["empty", "strings", "0-d"],
)
def test_a_bad_evaluation_file_is_a_configuration_error(arrays: dict, message: str, tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))  # never read: the data is refused first
    data = write_npz(tmp_path / "eval.npz", **arrays)
    result = run_cli("deploy", "--target", "local", "--model", str(model), "--data", str(data), "--no-history")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("deploy-*.json"))


@pytest.mark.parametrize(("content", "problem"), [("[]", "a JSON list"), ('{"recipe": {}}', "missing baseline, final")])
def test_a_run_directory_with_a_foreign_optimize_json_is_refused(content: str, problem: str, tmp_path: Path) -> None:
    (tmp_path / "optimize.json").write_text(content)
    (tmp_path / "eval.npz").write_bytes(b"")
    for command in (["deploy", "--target", "local", str(tmp_path), "--no-history"], ["report", str(tmp_path)]):
        result = run_cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert f"not an optimize result ({problem})" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("target", ["local", "loopback"])
def test_a_workdir_that_reads_as_an_option_runs_nothing(target: str, tmp_path: Path) -> None:
    """Before: EDGEPIPE_LOCAL_WORKDIR="-cimport os;..." reached the interpreter as -c and ran the code."""
    payload = "-cimport os;os.system('touch pwned')#"
    env = {"EDGEPIPE_LOCAL_WORKDIR": payload, "EDGEPIPE_LOOPBACK_WORKDIR": payload, "EDGEPIPE_LOOPBACK_PORT": "22"}
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    result = run_cli("deploy", "--target", target, "--model", str(model), "--no-history", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "workdir" in result.stderr and "would read as an option" in result.stderr
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


def test_help_shows_flags_without_a_type() -> None:
    result = run_cli("deploy", "--help")
    assert result.returncode == 0
    assert "--quiet" in result.stdout and "<bool>" not in result.stdout
    assert "--runs <int>" in result.stdout  # options that take a value still show its type


@pytest.mark.parametrize("broken", ["key", "known_hosts"])
def test_a_missing_key_or_a_known_hosts_directory_is_a_set_up_mistake(broken: str, tmp_path: Path) -> None:
    """Before: exit 11 with the hint "is an SSH server listening on that port?"."""
    env = {"EDGEPIPE_LOOPBACK_PORT": "22", "EDGEPIPE_LOOPBACK_WORKDIR": str(tmp_path / "board")}
    if broken == "key":
        env["EDGEPIPE_LOOPBACK_KEY"] = str(tmp_path / "no-such-key")
    else:
        (tmp_path / "known").mkdir()
        env["EDGEPIPE_LOOPBACK_KNOWN_HOSTS"] = str(tmp_path / "known")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    result = run_cli("deploy", "--target", "loopback", "--model", str(model), "--no-history", env=env)
    assert result.returncode == 2, result.stderr
    expected = "key" if broken == "key" else "known_hosts"
    assert f"target loopback: {expected} {tmp_path}" in result.stderr and "listening" not in result.stderr


def test_a_name_that_is_neither_a_file_nor_a_preset_lists_the_presets(tmp_path: Path) -> None:
    result = run_cli("optimize", "prune-cluster-qta", cwd=tmp_path)
    assert result.returncode == 2
    assert "no such recipe file, and no preset of that name" in result.stderr
    assert "prune-cluster-qat" in result.stderr and "Traceback" not in result.stderr
