"""Reading YAML config files into validated models, with one-line errors that name the file and the field.

String values may use ``${EDGEPIPE_NAME}`` or ``${EDGEPIPE_NAME:-default}``; only ``EDGEPIPE_*`` variables are
substituted, so a recipe cannot read arbitrary secrets from the environment. ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgepipe.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)

_VARIABLE = re.compile(r"\$\$\{|\$\{([^}:]*)(?::-([^}]*))?\}")


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, turning every way it can fail into a ConfigError naming the file."""
    if not path.exists():
        raise ConfigError.at(str(path), None, "file not found")
    if path.is_dir():
        raise ConfigError.at(str(path), None, "is a directory, expected a YAML file")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError.at(str(path), where, f"not valid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError.at(str(path), None, "not a UTF-8 text file") from None
    if not isinstance(document, dict):
        raise ConfigError.at(str(path), None, f"expected a mapping at the top level, got {_kind(document)}")
    return document


def substitute_environment(value: Any, file: str, location: str = "", env: Mapping[str, str] | None = None) -> Any:
    """Replace ``${EDGEPIPE_*}`` references in every string of a parsed YAML document."""
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: substitute_environment(v, file, _join(location, str(k)), env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_environment(v, file, f"{location}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if not name.startswith("EDGEPIPE_"):
            raise ConfigError.at(
                file, location, f"${{{name}}}: only EDGEPIPE_* environment variables can be used in config files"
            )
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError.at(
            file,
            location,
            f"environment variable {name} is not set",
            hint=f"export {name}=... or write ${{{name}:-default}}",
        )

    return _VARIABLE.sub(replace, value)


def load_model(path: Path, model: type[ModelT]) -> ModelT:
    """Read, substitute and validate a YAML file as ``model``."""
    raw = substitute_environment(read_yaml(path), str(path))
    return validate(raw, model, str(path))


def validate(raw: Mapping[str, Any], model: type[ModelT], file: str) -> ModelT:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, file, model) from None


# What users of TF-MOT and other tools call some of edgepipe's fields: named in the error of an unknown field.
FIELD_ALIASES = {
    "number_of_clusters": "clusters",
    "cluster_centroids_init": "init",
    "final_sparsity": "target_sparsity",
    "sparsity": "target_sparsity",
    "begin_sparsity": "initial_sparsity",
    "lr": "learning_rate",
    "quantize_scheme": "scheme",
    "num_calibration_samples": "representative_samples",
    "calibration_samples": "representative_samples",
}


def _config_error(exc: ValidationError, file: str, model: type[BaseModel] | None = None) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    explained = _explain(first)
    unknown = first["type"] == "extra_forbidden" and model is not None and first["loc"]
    suggestion = _did_you_mean(str(first["loc"][-1]), _field_names(model)) if unknown and model else ""
    if suggestion:
        explained = f"unknown field; {suggestion} (see the reference in README.md)"
    message = ConfigError.at(file, format_location(first["loc"]), explained).message
    if len(errors) > 1:
        others = ", ".join(format_location(e["loc"]) or "(top level)" for e in errors[1:4])
        more = f" and {len(errors) - 4} more" if len(errors) > 4 else ""
        message += f" (also wrong: {others}{more})"
    return ConfigError(message)


_STAGE_TAGS = {"channel_prune", "low_rank", "distill", "prune", "cluster", "qat", "ptq"}
_KINDS = "channel_prune, low_rank, distill, prune, cluster, qat, ptq"


def format_location(loc: tuple[Any, ...]) -> str:
    """``('stages', 1, 'cluster', 'clusters')`` -> ``stages[1].clusters`` (the union tag is noise to a user)."""
    out = ""
    previous: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in _STAGE_TAGS:
            pass
        else:
            out = _join(out, str(part))
        previous = part
    return out


def _explain(error: Mapping[str, Any]) -> str:
    kind, message, given = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see the recipe reference in README.md)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        tag = given.get("kind") if isinstance(given, dict) else given
        return f"unknown stage kind {tag!r}; expected one of {_KINDS}"
    if kind == "union_tag_not_found":
        return f"a stage needs a 'kind' (one of {_KINDS})"
    message = message.removeprefix("Value error, ")
    if kind == "value_error" and isinstance(given, (dict, list)):
        return message  # a validator of a whole section or list, whose message names what is wrong itself
    if isinstance(given, (dict, list)):
        return f"{message} (got {_kind(given)})"
    return f"{message} (got {given!r})"


def _did_you_mean(name: str, known: set[str]) -> str:
    alias = FIELD_ALIASES.get(name)
    if alias in known:
        return f"edgepipe calls it {alias!r}"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}?" if close else ""


def _field_names(model: type[BaseModel]) -> set[str]:
    """Every field name of ``model`` and of the models its fields hold (stages of every kind included)."""
    names: set[str] = set()
    seen: set[type] = set()

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in seen:
                return
            seen.add(annotation)
            for name, field in annotation.model_fields.items():
                names.add(name)
                visit(field.annotation)
            return
        for argument in typing.get_args(annotation):
            visit(argument)

    visit(model)
    return names


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
