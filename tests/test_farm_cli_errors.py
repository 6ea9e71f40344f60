"""``edgepipe farm``'s usage mistakes and farm-file mistakes through the real CLI: one line naming the field,
exit 2 (an unreachable shared history: exit 10), no traceback, nothing written. No lab is needed for these."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from farmkit import farm_cli, finish, make_models

from edgepipe.farm.store import FarmStore


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize(
    ("farm", "expected"),
    [
        ({"name": "lab", "pools": {"rpi4": {"boards": ["nope"]}}}, "pools.rpi4.boards[0]: unknown target 'nope'"),
        ({"name": "lab", "pools": {"rpi4": {"boards": ["local", "local"]}}}, "board 'local' is listed twice"),
        ({"name": "lab", "pools": {"rpi4": {"boards": ["local"], "atempts": 2}}}, "pools.rpi4.atempts"),
        ({"name": "lab", "pools": {}}, "pools"),
        ({"name": "lab", "pools": {"a": {"boards": ["local"]}}, "lease": {"ttl_s": 10, "heartbeat_s": 8}},
         "heartbeat_s (8) must be at most half of ttl_s (10)"),
    ],
)  # fmt: skip
def test_farm_file_mistakes_are_one_line(tmp_path: Path, models: dict, farm: dict, expected: str) -> None:
    (tmp_path / "lab.yaml").write_text(json.dumps(farm))
    code, _out, err = finish(farm_cli(tmp_path, "run", "lab.yaml", str(models["small"])), 60)
    assert code == 2, err
    assert expected in err and "lab.yaml" in err and "Traceback" not in err


def test_usage_mistakes(tmp_path: Path, models: dict) -> None:
    (tmp_path / "lab.yaml").write_text(json.dumps({"name": "lab", "pools": {"host": {"boards": ["local"]}}}))
    for args, expected in (
        (("run", "lab.yaml", "missing.tflite"), "missing.tflite: file not found"),
        (("run", "nofarm.yaml", str(models["small"])), "nofarm.yaml: file not found"),
        (("resume", "99"), "no farm run 99"),
        (("status", "99"), "no farm run 99"),
        (("run", "lab.yaml"), "Missing argument"),
    ):
        code, _out, err = finish(farm_cli(tmp_path, *args), 60)
        assert code == 2, (args, err)
        assert expected in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "farm-runs").exists()
    with FarmStore(tmp_path / "history.sqlite") as store:
        assert store.farm_runs() == []
    # A shared history that cannot be reached is the infrastructure's fault (exit 10), and the password stays out.
    dead = "postgresql://edgepipe:secret@127.0.0.1:1/lab"
    code, _out, err = finish(farm_cli(tmp_path, "run", "lab.yaml", str(models["small"]), "--history", dead), 60)
    assert code == 10, err
    assert "cannot open the results history postgresql://edgepipe:***@127.0.0.1:1/lab" in err
    assert "secret" not in err and "Traceback" not in err
