"""The farm report as one self-contained HTML file (styles inline, no fetches), like the run report."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from edgepipe.reporting.formatting import latency, mib, pct

BADGE = {"pass": "passed", "regression": "failed", "model-error": "failed", "infra-error": "infra",
         "inconclusive": "warn"}  # fmt: skip


def render_html(document: dict[str, Any]) -> str:
    environment = Environment(
        loader=PackageLoader("edgepipe.farm", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(latency=latency, mib=mib, pct=pct)
    cells = {(job["model"], job["pool"]): job for job in document["jobs"]}
    return environment.get_template("farm.html.j2").render(doc=document, cells=cells, badge=BADGE, plural=plural)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
