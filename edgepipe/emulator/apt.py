"""Fetching another architecture's Debian packages with this machine's apt, without root and without touching it.

apt runs with every directory it writes redirected into the build folder (lists, cache, status) and with
``APT::Architecture`` set to the image's: ``apt-get install --download-only`` then resolves the dependency
closure of the requested packages against an empty system and downloads it. ``dpkg-deb -x`` unpacks each
package; no maintainer script runs (they would be foreign binaries anyway).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from edgepipe.config.target import EmulatorImage
from edgepipe.errors import DeadlineExceeded, InfrastructureError
from edgepipe.transport.base import CommandResult
from edgepipe.transport.local import LocalTransport

HOST_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))
STEP_S = 1800.0  # the longest a network step of a build (apt update, download, pip) may take: then it is stopped
UNPACK_S = 300.0


class EmulatorBuildError(InfrastructureError):
    """The image cannot be built: apt, the mirror or the package registry is unavailable or refused."""


def run_bounded(argv: Sequence[str], seconds: float, problem: str, env: dict[str, str] | None = None) -> CommandResult:
    """One step of a build, as a child process group that dies with edgepipe and is stopped after ``seconds``
    (apt and pip have timeouts per connection, not per run: a mirror that trickles can hold them for hours)."""
    try:
        return LocalTransport(Path.cwd(), env).run(argv, timeout=seconds)
    except DeadlineExceeded:
        raise EmulatorBuildError(
            f"{problem}: {argv[0]} did not finish within {seconds:.0f} s and was stopped",
            hint="is the Debian mirror / package registry reachable and answering from this machine? Build again "
            "when it is, or allow more time (edgepipe emulator build --step-timeout SECONDS)",
        ) from None


def sources(spec: EmulatorImage) -> str:
    """deb822 sources for the image: the mirror this machine's apt uses (or ``spec.mirror``), the image's suite."""
    if spec.mirror:
        base, security = spec.mirror.rstrip("/"), None
    else:
        base, security = _host_mirrors()
    stanzas = [_stanza(base, [spec.suite, f"{spec.suite}-updates"], spec.debian_arch)]
    if security:
        stanzas.append(_stanza(security, [f"{spec.suite}-security"], spec.debian_arch))
    return "\n".join(stanzas)


def _stanza(uri: str, suites: list[str], arch: str) -> str:
    return (
        f"Types: deb\nURIs: {uri}\nSuites: {' '.join(suites)}\nComponents: main\n"
        f"Architectures: {arch}\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def _host_mirrors() -> tuple[str, str | None]:
    """The Debian archive and security URIs from this machine's apt sources (deb822 or one-line format)."""
    uris: list[str] = []
    for place in HOST_SOURCES:
        files = sorted(place.glob("*.sources")) + sorted(place.glob("*.list")) if place.is_dir() else [place]
        for file in files:
            if not file.is_file():
                continue
            for line in file.read_text(errors="replace").splitlines():
                words = line.split()
                if line.startswith("URIs:"):
                    uris += words[1:]
                elif words[:1] == ["deb"]:
                    uris += [w for w in words[1:] if "://" in w][:1]
    debian = [u.rstrip("/") for u in uris if u.rstrip("/").endswith("/debian")]
    security = [u.rstrip("/") for u in uris if u.rstrip("/").endswith("/debian-security")]
    if not debian:
        raise EmulatorBuildError(
            "no Debian mirror found in this machine's apt sources",
            hint="set emulator.mirror in the target (or EDGEPIPE_DEBIAN_MIRROR) to a Debian mirror URL",
        )
    return debian[0], security[0] if security else None


def apt_options(work: Path, arch: str) -> list[str]:
    return [
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={work / 'sources.list.d'}",
        "-o", "Dir::Etc::Preferences=/dev/null",
        "-o", f"Dir::Etc::PreferencesParts={work / 'preferences.d'}",
        "-o", f"Dir::State={work / 'state'}",
        "-o", f"Dir::State::status={work / 'state' / 'status'}",
        "-o", f"Dir::Cache={work / 'cache'}",
        "-o", f"APT::Architecture={arch}",
        "-o", f"APT::Architectures::={arch}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Sandbox::User=" + ("root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")),
    ]  # fmt: skip


def download(spec: EmulatorImage, work: Path, seconds: float = STEP_S) -> list[Path]:
    """Download the closure of ``spec.debian_packages`` for ``spec.debian_arch``; returns the .deb files. Each
    apt-get run is stopped after ``seconds``."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise EmulatorBuildError(
            "building an emulator image needs apt-get and dpkg-deb (a Debian or Ubuntu machine)",
            hint="build the image on a Debian machine, then copy ~/.cache/edgepipe/emulators",
        )
    for folder in ("sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    (work / "state" / "status").touch()
    (work / "sources.list.d" / "image.sources").write_text(sources(spec))
    options = apt_options(work, spec.debian_arch)
    _apt(["apt-get", *options, "update"], "apt-get update for the image's architecture failed", seconds)
    _apt(
        ["apt-get", *options, "install", "--download-only", "--no-install-recommends", "-y", *spec.debian_packages],
        "downloading the image's Debian packages failed",
        seconds,
    )
    return sorted((work / "cache" / "archives").glob("*.deb"))


def unpack(debs: list[Path], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        done = run_bounded(["dpkg-deb", "-x", str(deb), str(root)], UNPACK_S, f"unpacking {deb.name}")
        if done.returncode != 0:
            raise EmulatorBuildError(f"cannot unpack {deb.name}: {done.stderr.strip()[-300:]}")


def _apt(argv: list[str], problem: str, seconds: float) -> None:
    done = run_bounded(argv, seconds, problem, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    failed = done.returncode != 0 or any(line.startswith(("E:", "Err:")) for line in done.stdout.splitlines())
    if failed:
        detail = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith(("E:", "Err:", "W:"))]
        raise EmulatorBuildError(
            f"{problem}: {' | '.join(detail[-3:]) or done.stderr.strip()[-300:]}",
            hint="is the Debian mirror reachable from this machine? (apt-get update must work)",
        )
