"""Open a page in Debian's headless Chromium and report what a user's browser would see.

Three observations, each from Chromium itself: the DOM after scripts ran (``--dump-dom``), every console message
(``--enable-logging=stderr`` prints them as ``:CONSOLE``), and every network request the page made (its net log;
requests of the browser's own services are told apart by their network isolation key, which is the page's
origin only for the page's requests). A screenshot is kept as a test artifact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI; Chromium's sandbox refuses root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing on the page could load from the network even if it tried
)


@dataclass(frozen=True)
class PageLoad:
    dom: str
    console: list[str]
    page_requests: list[str]


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "the report test needs Debian's chromium (apt-get install chromium); scripts/test installs it"
    return found


def load(page: Path, screenshot: Path | None = None, width: int = 1400) -> PageLoad:
    """Load ``page`` in headless Chromium: its DOM after scripts, console messages, network requests; and a
    screenshot ``width`` CSS pixels wide (1400: a desktop, 390: a phone) when asked."""
    with tempfile.TemporaryDirectory(prefix="edgepipe-chromium-") as work:
        netlog = Path(work) / "netlog.json"
        common = [chromium(), *FLAGS, f"--user-data-dir={work}/profile", "--enable-logging=stderr", "--v=0"]
        done = subprocess.run(
            [*common, f"--log-net-log={netlog}", f"--window-size={width},900", "--dump-dom", page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
        requests = _page_requests(netlog)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = subprocess.run(
                [*common, f"--screenshot={screenshot}", f"--window-size={width},3200", page.resolve().as_uri()],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    return PageLoad(done.stdout, console, requests)


def _page_requests(netlog: Path) -> list[str]:
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and "file://" in str(params.get("network_isolation_key", "")):
            urls.append(params["url"])
    return urls


def artifacts_dir() -> Path:
    """Where tests keep files for people to look at (CI can upload it): $EDGEPIPE_TEST_ARTIFACTS or test-artifacts/."""
    return Path(os.environ.get("EDGEPIPE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


def body_attribute(dom: str, name: str) -> str | None:
    found = re.search(rf'<body[^>]*\s{re.escape(name)}="([^"]*)"', dom)
    return found.group(1) if found else None
