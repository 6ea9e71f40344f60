"""What the board is and how it is running right now (CPU, frequency, temperature, throttling, memory), and the
TFLite runtimes it has. None of it needs root; what cannot be read is null."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

from edgepipe_agent.protocol import AGENT_VERSION, DISTRIBUTIONS, RESULT_PROTOCOL, RUNTIMES


def read_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = read_file("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    # A Raspberry Pi names itself in "Model"; x86 in "model name"; other ARM boards in "Hardware".
    return fields.get("Model") or fields.get("model name") or fields.get("Hardware") or platform.processor() or None


def _throttling() -> dict[str, Any] | None:
    """``vcgencmd get_throttled`` on a Raspberry Pi: bits 0-3 happen now, bits 16-19 happened since boot."""
    tool = shutil.which("vcgencmd")
    if tool is None:
        return None
    try:
        done = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=5, check=False)
        value = int(done.stdout.strip().partition("=")[2], 16)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {"raw": None}
    return {
        "raw": hex(value),
        "under_voltage_now": bool(value & 0x1),
        "frequency_capped_now": bool(value & 0x2),
        "throttled_now": bool(value & 0x4),
        "soft_temperature_limit_now": bool(value & 0x8),
        "throttled_since_boot": bool(value & 0x40000) or bool(value & 0x10000),
    }


def _temperature_c() -> float | None:
    raw = read_file("/sys/class/thermal/thermal_zone0/temp")
    return round(int(raw) / 1000, 1) if raw and raw.lstrip("-").isdigit() else None


def _emulated() -> bool:
    """Set by the host's emulator transport: QEMU user mode shows the guest's view of /proc, not itself."""
    return os.environ.get("EDGEPIPE_EMULATED") == "1"


def installed_version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` (one module can ship under several names)."""
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def board_state() -> dict[str, Any]:
    """What the board is and how it is running right now; none of it needs root, missing parts are null."""
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq"
    current_khz = read_file(f"{cpufreq}/scaling_cur_freq")
    max_khz = read_file(f"{cpufreq}/cpuinfo_max_freq")
    os_release = dict(
        line.split("=", 1) for line in (read_file("/etc/os-release") or "").splitlines() if "=" in line
    ).get("PRETTY_NAME")
    meminfo = {
        k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in (read_file("/proc/meminfo") or "").splitlines())
    }
    return {
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governor": read_file(f"{cpufreq}/scaling_governor"),
        "mhz_current": int(current_khz) // 1000 if current_khz and current_khz.isdigit() else None,
        "mhz_max": int(max_khz) // 1000 if max_khz and max_khz.isdigit() else None,
        "temperature_c": _temperature_c(),
        "throttling": _throttling(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_total_kb": meminfo.get("MemTotal"),
        "memory_available_kb": meminfo.get("MemAvailable"),
        "kernel": platform.release(),
        "os": os_release.strip('"') if os_release else None,
        "hostname": platform.node(),
        "python": platform.python_version(),
        "numpy": installed_version("numpy"),
        "emulated": _emulated(),
    }


def available_runtimes() -> dict[str, str | None]:
    """Runtime module -> installed version, without importing any of them (importing TensorFlow takes seconds)."""
    from importlib.util import find_spec

    return {
        name: installed_version(*DISTRIBUTIONS[name]) or "unknown" for name in RUNTIMES if find_spec(name) is not None
    }


def probe(workdir: str) -> dict[str, Any]:
    free = shutil.disk_usage(workdir if os.path.isdir(workdir) else os.path.expanduser("~")).free
    return {
        "protocol": RESULT_PROTOCOL,
        "agent_version": AGENT_VERSION,
        "board": board_state(),
        "runtimes": available_runtimes(),
        "executable": sys.executable,
        "free_disk_bytes": free,
    }
