"""The report's JSON schema (``report.schema.json``), and validation against it before anything is written."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("report.schema.json")


@cache
def report_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def schema_errors(document: Any) -> list[str]:
    """Every violation as 'path: message'; empty when the document is valid."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(report_schema())
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]
