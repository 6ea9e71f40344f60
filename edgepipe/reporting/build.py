"""``edgepipe report``'s work without the terminal: collect, validate against the schema, render, write.

Nothing is written unless every requested output rendered and the document validated, and all the files are
replaced together or not at all: a report either stays as it was or is wholly the new one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.errors import INTERNAL_ERROR_EXIT_CODE, ConfigError, EdgepipeError
from edgepipe.files import write_all_atomic
from edgepipe.reporting.collect import collect
from edgepipe.reporting.schema import schema_errors


class ReportSchemaError(EdgepipeError):
    """The collected document does not match the schema: a bug in edgepipe, never in the user's input."""

    exit_code = INTERNAL_ERROR_EXIT_CODE


@dataclass(frozen=True)
class ReportFiles:
    document: dict[str, Any]
    json: Path
    html: Path | None
    markdown: Path | None


def build_report(run_dir: Path, *, json_out: Path, html: Path | None, markdown: Path | None) -> ReportFiles:
    document = collect(run_dir)
    errors = schema_errors(document)
    if errors:
        raise ReportSchemaError(
            f"the report does not match its schema ({len(errors)} problem(s)); first: {errors[0]}",
            hint="this is a bug in edgepipe; please report it with the run directory's optimize.json",
        )
    rendered: dict[Path, str] = {json_out: json.dumps(document, indent=1) + "\n"}
    if html is not None:
        from edgepipe.reporting.html import render_html  # matplotlib and jinja2 only when a page is asked for

        rendered[html] = render_html(document)
    if markdown is not None:
        from edgepipe.reporting.markdown import render_markdown

        rendered[markdown] = render_markdown(document, html.name if html is not None else None)
    try:
        write_all_atomic(dict(rendered))  # all outputs are replaced, or none
    except OSError as exc:
        raise ConfigError(
            f"cannot write {exc.filename}: {exc.strerror or exc}",
            hint="choose another path for --html/--md/--json; no report file was changed",
        ) from exc
    return ReportFiles(document, json_out, html, markdown)
