"""Emulated board images: build once (Debian packages + Python wheels for the board's platform), cache, check.

An image lives in ``$EDGEPIPE_EMULATOR_DIR`` (default ``~/.cache/edgepipe/emulators``) as ``<image>/root`` with an
``image.json`` manifest. It is built in a hidden ``.<image>.partial-<pid>`` folder and renamed into place
only once its Python has run under QEMU and imported numpy and the runtimes, so a half-built image is never
used. The manifest records a hash of the image's recipe: a second build with the same recipe returns at once,
a changed recipe rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.config.target import EmulatorImage, Target
from edgepipe.emulator.apt import STEP_S, EmulatorBuildError, download, run_bounded, unpack
from edgepipe.errors import ConfigError, InfrastructureError
from edgepipe.progress import Progress
from edgepipe.provenance import now

MANIFEST = "image.json"
PROBE_S = 300.0  # importing numpy and the runtime under QEMU
PROBE = (
    "import json, platform, sys\n"
    "from importlib import metadata, util\n"
    "found = {}\n"
    "for module, dist in (('numpy', 'numpy'), ('ai_edge_litert', 'ai-edge-litert'), "
    "('tflite_runtime', 'tflite-runtime')):\n"
    "    if util.find_spec(module):\n"
    "        __import__(module if module == 'numpy' else module + '.interpreter')\n"
    "        found[module] = metadata.version(dist)\n"
    "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), 'packages': found}))\n"
)


class EmulatorMissing(InfrastructureError):
    """QEMU is not installed, or the image was not built."""


@dataclass(frozen=True)
class Image:
    spec: EmulatorImage
    folder: Path

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def manifest(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.folder / MANIFEST).read_text()))
        except (OSError, ValueError):
            return None

    @property
    def built(self) -> bool:
        manifest = self.manifest
        return manifest is not None and manifest.get("recipe_sha256") == recipe_hash(self.spec)

    def python_command(self) -> list[str]:
        """How the host starts the image's Python: ``qemu -L ROOT ROOT/usr/bin/python3.11`` (no binfmt needed)."""
        return [*self.launcher(), str(self.root) + self.spec.python]

    def launcher(self) -> list[str]:
        cpu = ["-cpu", self.spec.cpu] if self.spec.cpu else []
        return [qemu_binary(self.spec), *cpu, "-L", str(self.root)]


def emulator_dir() -> Path:
    return Path(os.environ.get("EDGEPIPE_EMULATOR_DIR") or Path.home() / ".cache" / "edgepipe" / "emulators")


def recipe_hash(spec: EmulatorImage) -> str:
    recipe = spec.model_dump(mode="json", exclude={"qemu", "mirror", "cpu"})  # how it runs, not what it holds
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def image_for(target: Target) -> Image:
    if target.emulator is None:
        raise ConfigError(f"target {target.name} is not emulated (it has no emulator section)")
    return Image(target.emulator, emulator_dir() / target.emulator.image)


def qemu_binary(spec: EmulatorImage) -> str:
    """The QEMU user-mode emulator: ``$EDGEPIPE_QEMU`` or the target's ``emulator.qemu``, found on PATH."""
    name = os.environ.get("EDGEPIPE_QEMU") or spec.qemu
    found = shutil.which(name)
    if found is None:
        raise EmulatorMissing(
            f"the QEMU user-mode emulator {name!r} is not installed",
            hint="apt-get install qemu-user-static (or set EDGEPIPE_QEMU to its path)",
        )
    return found


def wheel_platforms(spec: EmulatorImage) -> list[str]:
    """manylinux tags the image's glibc can load, newest first (pip needs them spelled out)."""
    major, minor = (int(part) for part in spec.glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{spec.wheel_arch}" for m in range(minor, 16, -1)]
    return [*tags, f"manylinux2014_{spec.wheel_arch}", "any"]


def build(
    spec: EmulatorImage, progress: Progress | None = None, force: bool = False, step_s: float = STEP_S
) -> tuple[Image, bool]:
    """Build (or find) the image; returns it and whether it was already built. A network step (apt update,
    the download, pip) that runs longer than ``step_s`` is stopped and fails the build."""
    progress = progress or Progress()
    image = Image(spec, emulator_dir() / spec.image)
    qemu_binary(spec)  # fail before downloading anything
    if image.built and not force:
        return image, True
    partial = image.folder.parent / f".{spec.image}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        progress.phase(
            f"resolving {spec.debian_arch} Debian {spec.suite} packages for {', '.join(spec.debian_packages)}"
        )
        debs = download(spec, partial / "apt", step_s)
        size = sum(deb.stat().st_size for deb in debs)
        progress.phase(f"unpacking {len(debs)} packages ({size / 2**20:.1f} MB)")
        unpack(debs, partial / "root")
        progress.phase(f"installing {', '.join(spec.python_packages)} for {spec.wheel_arch} from the package registry")
        _install_wheels(spec, partial / "root", step_s)
        progress.phase("checking the image under QEMU")
        report = _check(Image(spec, partial))
        manifest = {
            "image": spec.image,
            "created": now(),
            "recipe_sha256": recipe_hash(spec),
            "recipe": spec.model_dump(mode="json"),
            "debian_packages": sorted(deb.name for deb in debs),
            "check": report,
            "qemu": _qemu_version(spec),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.rmtree(partial / "apt")
        old = image.folder.parent / f".{spec.image}.old-{os.getpid()}"
        if image.folder.exists():
            image.folder.rename(old)
        partial.rename(image.folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return image, False


def remove(spec: EmulatorImage) -> bool:
    folder = emulator_dir() / spec.image
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _install_wheels(spec: EmulatorImage, root: Path, seconds: float) -> None:
    site = root / "usr" / "lib" / "python3" / "dist-packages"
    platforms = [arg for tag in wheel_platforms(spec) for arg in ("--platform", tag)]
    abi = "cp" + spec.python_version.replace(".", "")
    argv = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
        "--target", str(site), *platforms, "--python-version", spec.python_version, "--implementation", "cp",
        "--abi", abi, "--abi", "none", "--only-binary=:all:", *spec.python_packages,
    ]  # fmt: skip
    done = run_bounded(argv, seconds, f"installing {', '.join(spec.python_packages)} for {spec.wheel_arch}")
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise EmulatorBuildError(
            f"installing {', '.join(spec.python_packages)} for {spec.wheel_arch} failed: "
            + (" | ".join(errors[-2:]) or done.stderr.strip()[-300:]),
            hint="is the package registry reachable, and does every package have a wheel for "
            f"{spec.wheel_arch} and Python {spec.python_version}?",
        )


def _check(image: Image) -> dict[str, Any]:
    done = run_bounded([*image.python_command(), "-c", PROBE], PROBE_S, "running the image's Python under QEMU")
    try:
        report = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        raise EmulatorBuildError(
            f"the image's Python does not run under QEMU (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        ) from None
    if "numpy" not in report["packages"] or len(report["packages"]) < 2:
        raise EmulatorBuildError(f"the image lacks numpy or a TFLite runtime: {report['packages']}")
    return report


def _qemu_version(spec: EmulatorImage) -> str:
    done = run_bounded([qemu_binary(spec), "--version"], 60, "asking QEMU its version")
    return done.stdout.splitlines()[0] if done.stdout else "unknown"
