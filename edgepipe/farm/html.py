"""The farm report as one self-contained HTML file (styles inline, no fetches), like the run report."""

from __future__ import annotations

from typing import Any

from edgepipe.reporting.formatting import plural
from edgepipe.reporting.html import template_environment

BADGE = {"pass": "passed", "regression": "failed", "model-error": "failed", "infra-error": "infra",
         "inconclusive": "warn"}  # fmt: skip
ATTEMPT_BADGE = {"done": "passed", "model-error": "failed", "infra-error": "infra", "fenced-off": "warn",
                 "abandoned": "warn"}  # fmt: skip


def render_html(document: dict[str, Any]) -> str:
    cells = {(job["model"], job["pool"]): job for job in document["jobs"]}
    template = template_environment("edgepipe.farm").get_template("farm.html.j2")
    return template.render(doc=document, cells=cells, badge=BADGE, attempt_badge=ATTEMPT_BADGE, plural=plural)
