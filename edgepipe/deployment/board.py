"""Preparing and checking a board: ``edgepipe agent install`` and ``edgepipe targets check``.

Both go through the same transport and cache as a deploy, so a board that passes the check can be deployed to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgepipe.config.target import Target
from edgepipe.deployment.agent import agent_python, install_agent, probe
from edgepipe.deployment.cache import CacheUsage, RemoteCache, helper_python, limit_bytes
from edgepipe.errors import AgentError, EdgepipeError, InfrastructureError
from edgepipe.progress import Progress
from edgepipe.reporting.formatting import plural
from edgepipe.transport import Transport, open_transport

MIN_FREE_DISK = 200 * 1024 * 1024
HOT_C = 80.0
PIP_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass" | "fail" | "warn" | "n/a"
    detail: str
    hint: str | None = None  # what to do about a failure, when the failing step knows


def check_target(target: Target, progress: Progress | None = None) -> list[Check]:
    """Reachability, Python, agent, runtime, architecture, disk, governor, temperature and throttling."""
    progress = progress or Progress()
    rows: list[Check] = []
    try:
        progress.phase(f"connecting to {target.where()}")
        transport = open_transport(target)
    except InfrastructureError as exc:
        return [Check("reachable", "fail", exc.message, exc.hint)]
    with transport:
        rows.append(Check("reachable", "pass", f"{transport.describe()}" + _first_use(transport)))
        # The board's own interpreter: on an emulated board the image's (the transport runs it under QEMU),
        # not this machine's Python that writes the image's files.
        helper = agent_python(target) if target.transport == "qemu" else helper_python(target)
        version = transport.run([helper, "-c", "import sys; print(sys.version.split()[0])"], timeout=60)
        if not version.ok:
            rows.append(Check("python", "fail", f"{helper} does not run on the board: {version.stderr.strip()[-200:]}"))
            return rows
        where = " (in the emulated image)" if target.transport == "qemu" else ""
        rows.append(Check("python", "pass", f"{helper} {version.stdout.strip()}{where}"))
        try:
            cache = RemoteCache.for_target(transport, target, progress)
            agent_path = install_agent(transport, cache, target)
            rows.append(Check("agent", "pass", agent_path))
            report = probe(transport, target, agent_path, agent_python(target))
        except EdgepipeError as exc:
            rows.append(Check("agent", "fail", exc.message, exc.hint))
            return rows
        try:
            usage: CacheUsage | str = cache.trim(None)
        except EdgepipeError as exc:
            usage = exc.message
    rows += _board_rows(target, report)
    rows.append(_cache_row(target, usage))
    return rows


def _cache_row(target: Target, usage: CacheUsage | str) -> Check:
    if isinstance(usage, str):
        return Check("edgepipe's files", "warn", usage)
    held = f"{plural(usage.files, 'file')} in {target.workdir} (models, data, agents): {usage.bytes / 2**20:,.1f} MB"
    if target.cache_limit_mb is None:
        return Check("edgepipe's files", "pass", f"{held}, no limit (cache_limit_mb: null)")
    if usage.bytes <= (limit_bytes(target) or 0):
        return Check("edgepipe's files", "pass", f"{held} of its {target.cache_limit_mb:g} MB limit")
    return Check(
        "edgepipe's files",
        "warn",
        f"{held}, over its {target.cache_limit_mb:g} MB limit (files used in the last hour are kept)",
        f"edgepipe agent clean --target {target.name}",
    )


def clean_cache(target: Target, everything: bool, progress: Progress | None = None) -> CacheUsage:
    """``edgepipe agent clean``: trim the board's cache to the target's limit now, or remove all of it (the agent
    included: the next deploy sends it again). The venv of ``agent install`` stays."""
    progress = progress or Progress()
    progress.phase(f"connecting to {target.where()}")
    with open_transport(target) as transport:
        progress.phase(f"cleaning {target.workdir} on {target.name}")
        cache = RemoteCache.for_target(transport, target, progress)
        return cache.trim(0, recent_s=0) if everything else cache.trim(limit_bytes(target))


def _first_use(transport: Transport) -> str:
    recorded = getattr(transport, "first_use", None)
    return f" (host key trusted on first use and recorded: {recorded})" if recorded else ""


def _board_rows(target: Target, report: dict[str, Any]) -> list[Check]:
    board, runtimes = report["board"], report["runtimes"]
    rows = []
    if not runtimes:
        rows.append(Check("runtime", "fail", f"no TFLite runtime; run 'edgepipe agent install --target {target.name}'"))
    elif target.runtime != "auto" and target.runtime not in runtimes:
        rows.append(Check("runtime", "fail", f"{target.runtime} missing (found {', '.join(runtimes)})"))
    else:
        rows.append(Check("runtime", "pass", ", ".join(f"{k} {v}" for k, v in runtimes.items())))
    rows.append(
        Check("numpy", "pass", board["numpy"])
        if board.get("numpy")
        else Check("numpy", "fail", "numpy is not installed for the agent's Python")
    )
    machine = board["machine"]
    if target.arch is None:
        rows.append(Check("architecture", "pass", f"{machine} (target does not pin one)"))
    else:
        ok = machine == target.arch
        rows.append(Check("architecture", "pass" if ok else "fail", f"{machine}, target expects {target.arch}"))
    free = report["free_disk_bytes"]
    rows.append(
        Check("free disk", "pass" if free >= MIN_FREE_DISK else "fail", f"{free / 2**30:.1f} GiB in {target.workdir}")
    )
    governor = board.get("governor")
    if governor is None:
        rows.append(Check("governor", "n/a", "cpufreq is not readable (VM or container)"))
    else:
        rows.append(
            Check(
                "governor",
                "pass" if governor == "performance" else "warn",
                governor + ("" if governor == "performance" else ": latency varies with load; prefer 'performance'"),
            )
        )
    temperature = board.get("temperature_c")
    if temperature is None:
        rows.append(Check("temperature", "n/a", "no thermal zone readable"))
    else:
        rows.append(Check("temperature", "warn" if temperature >= HOT_C else "pass", f"{temperature} °C"))
    throttling = board.get("throttling")
    if throttling is None:
        rows.append(Check("throttling", "n/a", "vcgencmd not present (not a Raspberry Pi)"))
    elif throttling.get("throttled_now") or throttling.get("under_voltage_now"):
        rows.append(Check("throttling", "fail", f"throttled now ({throttling['raw']}): check power supply and cooling"))
    elif throttling.get("throttled_since_boot"):
        rows.append(Check("throttling", "warn", f"throttled since boot ({throttling['raw']})"))
    else:
        rows.append(Check("throttling", "pass", f"none ({throttling.get('raw')})"))
    if board.get("emulated"):
        rows.append(Check("emulated", "warn", "running under an emulator: latencies are not the board's"))
    return rows


def install_runtime(target: Target, progress: Progress | None = None) -> dict[str, Any]:
    """Create ``<workdir>/venv`` on the board with the target's packages, send the agent, return its probe."""
    progress = progress or Progress()
    progress.phase(f"connecting to {target.where()}")
    with open_transport(target) as transport:
        cache = RemoteCache.for_target(transport, target, progress)
        if target.transport == "local":
            progress.note("the local target runs the agent with edgepipe's own Python; nothing to install")
        elif target.transport == "qemu":
            progress.note("an emulated board's runtime comes with its image (edgepipe emulator build)")
        else:
            _make_venv(transport, target, progress)
        agent_path = install_agent(transport, cache, target)
        progress.phase("asking the agent what it finds")
        report = probe(transport, target, agent_path, agent_python(target))
    if not report["runtimes"]:
        raise AgentError(f"after installing, the agent still finds no TFLite runtime on {target.name}")
    return report


def _make_venv(transport: Transport, target: Target, progress: Progress) -> None:
    install = target.agent_install
    venv = f"{target.workdir}/venv"
    if target.python and target.python != f"{venv}/bin/python":
        progress.note(f"the target runs the agent with {target.python}, not the venv this creates")
    progress.phase(f"creating {venv} with {install.python}")
    transport.run_check(["mkdir", "-p", target.workdir], timeout=60)
    made = transport.run([install.python, "-m", "venv", venv], timeout=300)
    if not made.ok:
        raise AgentError(
            f"{install.python} -m venv failed on {target.name}: {(made.stderr or made.stdout).strip()[-300:]}",
            hint="on Debian and Raspberry Pi OS: sudo apt install python3-venv",
        )
    pip = [f"{venv}/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    if install.index_url:
        pip += ["--index-url", install.index_url]
    progress.phase(f"installing {', '.join(install.packages)} from the package registry (minutes on a small board)")
    done = transport.run([*pip, *install.packages], timeout=PIP_TIMEOUT_S)
    if not done.ok:
        raise AgentError(
            f"pip install on {target.name} failed: {(done.stderr or done.stdout).strip()[-400:]}",
            hint="check that the board reaches the package registry and that a wheel exists for its "
            "architecture and Python (agent_install.packages in the target)",
        )
