"""The verdict as JUnit XML, so CI systems show each check as a test case (inconclusive ones as skipped)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edgepipe.reporting.verdict import Verdict


def write_junit(verdict: Verdict, target: str, path: Path) -> None:
    cases = verdict.checks
    suite = ET.Element(
        "testsuite",
        name=f"edgepipe compare ({target})",
        tests=str(len(cases)),
        failures=str(sum(c.status == "fail" for c in cases)),
        skipped=str(sum(c.status in ("inconclusive", "n/a") for c in cases)),
        errors="0",
    )
    for check in cases:
        case = ET.SubElement(suite, "testcase", classname=f"edgepipe.compare.{target}", name=check.name)
        if check.status == "fail":
            ET.SubElement(case, "failure", message=check.message, type="regression").text = check.message
        elif check.status in ("inconclusive", "n/a"):
            ET.SubElement(case, "skipped", message=f"{check.status}: {check.message}")
        else:
            ET.SubElement(case, "system-out").text = f"{check.status}: {check.message}"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    ET.ElementTree(root).write(temporary, encoding="utf-8", xml_declaration=True)
    temporary.replace(path)
