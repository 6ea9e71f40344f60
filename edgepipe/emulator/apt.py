"""Fetching another architecture's Debian packages with this machine's apt, without root and without touching it.

apt runs with every directory it writes redirected into the build folder (lists, cache, status) and with
``APT::Architecture`` set to the image's: ``apt-get install --download-only`` then resolves the dependency
closure of the requested packages against an empty system and downloads it. ``dpkg-deb -x`` unpacks each
package; no maintainer script runs (they would be foreign binaries anyway).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edgepipe.config.target import EmulatorImage
from edgepipe.errors import InfrastructureError

HOST_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


class EmulatorBuildError(InfrastructureError):
    """The image cannot be built: apt, the mirror or the package registry is unavailable or refused."""


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


def download(spec: EmulatorImage, work: Path) -> list[Path]:
    """Download the closure of ``spec.debian_packages`` for ``spec.debian_arch``; returns the .deb files."""
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
    _apt(["apt-get", *options, "update"], "apt-get update for the image's architecture failed")
    _apt(
        ["apt-get", *options, "install", "--download-only", "--no-install-recommends", "-y", *spec.debian_packages],
        "downloading the image's Debian packages failed",
    )
    return sorted((work / "cache" / "archives").glob("*.deb"))


def unpack(debs: list[Path], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        done = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
        if done.returncode != 0:
            raise EmulatorBuildError(f"cannot unpack {deb.name}: {done.stderr.strip()[-300:]}")


def _apt(argv: list[str], problem: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    failed = done.returncode != 0 or any(line.startswith(("E:", "Err:")) for line in done.stdout.splitlines())
    if failed:
        detail = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith(("E:", "Err:", "W:"))]
        raise EmulatorBuildError(
            f"{problem}: {' | '.join(detail[-3:]) or done.stderr.strip()[-300:]}",
            hint="is the Debian mirror reachable from this machine? (apt-get update must work)",
        )
