"""Recipe validation: every bad input ends in one line naming the file and the field (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, write_recipe

from edgepipe.config import Recipe, load_model
from edgepipe.config.loading import substitute_environment
from edgepipe.errors import ConfigError
from edgepipe.optimization.pipeline import prepare

GOOD = """
name: t
model: {source: edgepipe.examples.digits:tiny_mlp, train: {epochs: 1}}
data: {source: edgepipe.examples.digits:load}
stages:
  - kind: prune
    target_sparsity: 0.5
  - kind: qat
"""


def error_for(tmp_path: Path, body: str) -> str:
    path = write_recipe(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        prepare(path)
    message = caught.value.message
    assert "\n" not in message
    assert str(path) in message
    return message


def test_good_recipe_is_accepted_with_defaults(tmp_path: Path) -> None:
    recipe = load_model(write_recipe(tmp_path, GOOD), Recipe)
    assert [s.kind for s in recipe.stages] == ["prune", "qat"]
    assert recipe.stages[1].scheme == "auto"
    assert recipe.fine_tune_for(recipe.stages[0]).epochs == recipe.fine_tune.epochs


def test_stage_fine_tune_overrides_only_what_it_sets(tmp_path: Path) -> None:
    body = GOOD.replace("target_sparsity: 0.5", "target_sparsity: 0.5\n    fine_tune: {epochs: 7}")
    body += "fine_tune: {epochs: 3, learning_rate: 0.01}\n"
    recipe = load_model(write_recipe(tmp_path, body), Recipe)
    settings = recipe.fine_tune_for(recipe.stages[0])
    assert (settings.epochs, settings.learning_rate) == (7, 0.01)


def test_unknown_field_names_the_field(tmp_path: Path) -> None:
    message = error_for(tmp_path, GOOD.replace("target_sparsity", "target_sparsty"))
    assert "stages[0].target_sparsty: unknown field; did you mean 'target_sparsity'?" in message
    # TF-MOT's name for a field is translated; a name like no field's gets no guess
    message = error_for(tmp_path, GOOD.replace("target_sparsity", "final_sparsity"))
    assert "stages[0].final_sparsity: unknown field; edgepipe calls it 'target_sparsity'" in message
    message = error_for(tmp_path, GOOD.replace("target_sparsity: 0.5", "flux_capacitor: 0.5"))
    assert "flux_capacitor: unknown field (check the spelling" in message and "did you mean" not in message


def test_wrong_type_names_the_field_and_expectation(tmp_path: Path) -> None:
    message = error_for(tmp_path, GOOD.replace("target_sparsity: 0.5", "target_sparsity: lots"))
    assert "stages[0].target_sparsity" in message and "valid number" in message and "'lots'" in message


def test_out_of_range_value(tmp_path: Path) -> None:
    message = error_for(tmp_path, GOOD.replace("target_sparsity: 0.5", "target_sparsity: 1.5"))
    assert "stages[0].target_sparsity" in message and "less than 1" in message


def test_unknown_stage_kind(tmp_path: Path) -> None:
    message = error_for(tmp_path, GOOD.replace("kind: prune", "kind: prun"))
    assert "stages[0]" in message and "'prun'" in message and "prune, cluster, qat, ptq" in message


def test_quantization_must_be_last(tmp_path: Path) -> None:
    body = GOOD.replace("  - kind: qat\n", "").replace("stages:\n", "stages:\n  - kind: qat\n")
    assert "qat stage must be the last stage" in error_for(tmp_path, body)


def test_prune_after_cluster_is_refused(tmp_path: Path) -> None:
    body = GOOD.replace("  - kind: qat\n", "").replace("stages:\n", "stages:\n  - kind: cluster\n")
    assert "prune must come before cluster" in error_for(tmp_path, body)


def test_missing_model_file(tmp_path: Path) -> None:
    message = error_for(tmp_path, GOOD.replace("edgepipe.examples.digits:tiny_mlp", "models/none.keras"))
    assert "model.source: file not found" in message and str(tmp_path / "models/none.keras") in message


def test_factory_that_does_not_exist(tmp_path: Path) -> None:
    message = error_for(tmp_path, GOOD.replace("digits:tiny_mlp", "digits:no_such_model"))
    assert "model.source" in message and "no_such_model" in message


def test_npz_lacking_y_test(tmp_path: Path) -> None:
    x = np.zeros((4, 8, 8, 1), np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(4, int), x_test=x)
    message = error_for(tmp_path, GOOD.replace("edgepipe.examples.digits:load", "d.npz"))
    assert "data.source" in message and "no array 'y_test'" in message


def test_npz_with_mismatched_lengths(tmp_path: Path) -> None:
    x = np.zeros((4, 8, 8, 1), np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(3, int), x_test=x, y_test=np.zeros(4, int))
    assert "the train arrays differ in samples: x_train has 4, y_train has 3" in error_for(
        tmp_path, GOOD.replace("edgepipe.examples.digits:load", "d.npz")
    )


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    objects = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "d.npz", x_train=objects, y_train=objects, x_test=objects, y_test=objects)
    assert "cannot read" in error_for(tmp_path, GOOD.replace("edgepipe.examples.digits:load", "d.npz"))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    assert "line 3" in error_for(tmp_path, "name: t\nmodel: {source: x\nstages: [\n")


def test_environment_templating() -> None:
    env = {"EDGEPIPE_EPOCHS": "5"}
    doc = {"a": "${EDGEPIPE_EPOCHS}", "b": ["${EDGEPIPE_MISSING:-7}"], "c": "$${literal}"}
    assert substitute_environment(doc, "f.yaml", env=env) == {"a": "5", "b": ["7"], "c": "${literal}"}
    with pytest.raises(ConfigError, match=r"f.yaml: a: environment variable EDGEPIPE_UNSET is not set"):
        substitute_environment({"a": "${EDGEPIPE_UNSET}"}, "f.yaml", env=env)
    with pytest.raises(ConfigError, match="only EDGEPIPE_"):
        substitute_environment({"a": "${HOME}"}, "f.yaml", env={"HOME": "/root"})


def test_templated_value_is_validated_as_its_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPIPE_SPARSITY", "0.75")
    recipe = load_model(write_recipe(tmp_path, GOOD.replace("0.5", "${EDGEPIPE_SPARSITY}")), Recipe)
    assert recipe.stages[0].target_sparsity == 0.75


def test_every_preset_is_valid() -> None:
    presets = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"ptq-int8", "prune-qat", "cluster-qat", "prune-cluster-qat"}
    for path in presets:
        recipe = load_model(path, Recipe)
        assert recipe.description, f"{path.name} needs a description"


def test_the_board_runtime_is_pinned_like_the_hosts() -> None:
    """The host evaluates with the device extra's ai-edge-litert; a board installing another version computes
    differently, and its accuracy check would compare two runtimes instead of two machines."""
    import tomllib

    from edgepipe.config.target import AgentInstall
    from edgepipe.targets import load_target

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["device"]
    (pin,) = [requirement for requirement in extra if requirement.startswith("ai-edge-litert")]
    assert "==" in pin
    assert pin in load_target("rpi4").agent_install.packages
    assert pin in AgentInstall().packages
    assert pin in load_target("rpi4-emu").emulator.python_packages


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("{kind: channel_prune, ratio: 1.5}", "stages[0].ratio"),
        ("{kind: channel_prune, criterion: taylor}", "stages[0].criterion"),
        ("{kind: channel_prune, per_layer: {conv*: 2}}", "stages[0].per_layer"),
        ("{kind: channel_prune, round_to: 0}", "stages[0].round_to"),
        ("{kind: low_rank, energy: 0.9, rank_ratio: 0.5}", "give energy or rank_ratio, not both"),
        ("{kind: low_rank, energy: 1.5}", "stages[0].energy"),
        ("{kind: distill, distill: {alpha: 2}}", "stages[0].distill.alpha"),
        ("{kind: distill, distill: {temprature: 4}}", "temprature"),
        ("{kind: prune, fine_tune: {distill: {temperature: 0}}}", "stages[0].fine_tune.distill.temperature"),
        ("{kind: prune, fine_tune: {learning_rate_schedule: cosin}}", "stages[0].fine_tune.learning_rate_schedule"),
    ],
)
def test_structured_compression_fields_fail_with_one_line_naming_them(
    tmp_path: Path, stage: str, expected: str
) -> None:
    body = GOOD.replace("  - kind: prune\n    target_sparsity: 0.5\n", f"  - {stage}\n")
    assert expected in error_for(tmp_path, body)


def test_rebuilding_stages_come_before_masks() -> None:
    base = {"name": "t", "model": {"source": "m.keras"}, "data": {"source": "d.npz"}}
    for kind in ("channel_prune", "low_rank"):
        with pytest.raises(Exception, match=f"{kind} must come before prune"):
            Recipe.model_validate({**base, "stages": [{"kind": "prune"}, {"kind": kind}]})
    Recipe.model_validate({**base, "stages": [{"kind": "channel_prune"}, {"kind": "distill"}, {"kind": "prune"}]})
