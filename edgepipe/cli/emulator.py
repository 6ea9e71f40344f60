"""``edgepipe emulator list | build NAME | remove NAME``: the emulated board images and their cache."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgepipe.cli.console import stdout
from edgepipe.config.target import EmulatorImage
from edgepipe.errors import ConfigError

app = typer.Typer(
    rich_markup_mode=None,
    help="Emulated boards (QEMU user mode) that run the same agent as the real ones.",
    no_args_is_help=True,
)


def _images() -> dict[str, tuple[EmulatorImage, list[str]]]:
    """Image name -> (its recipe, the targets that use it), from every target file."""
    from edgepipe.targets import load_target, target_files

    found: dict[str, tuple[EmulatorImage, list[str]]] = {}
    for name in target_files():
        target = load_target(name)
        if target.emulator is not None:
            _, users = found.setdefault(target.emulator.image, (target.emulator, []))
            users.append(target.name)
    return found


def _spec(name: str) -> EmulatorImage:
    images = _images()
    if name in images:
        return images[name][0]
    for spec, users in images.values():
        if name in users:
            return spec
    raise ConfigError(
        f"no emulator image or emulated target named {name!r} (known: {', '.join(sorted(images)) or 'none'})",
        hint="an image is defined by the emulator section of a target file, e.g. targets/rpi4-emu.yaml",
    )


@app.command("list")
def list_images() -> None:
    """List the images the targets define, whether each is built, and its size."""
    from edgepipe.emulator.image import Image, emulator_dir, size_on_disk

    table = Table("image", "targets", "built", "size", "arch", "python packages", box=None, pad_edge=False)
    for name, (spec, users) in sorted(_images().items()):
        image = Image(spec, emulator_dir() / name)
        built = image.manifest
        state = (
            f"[green]yes[/] ({built['created']})"
            if image.built and built
            else ("[yellow]outdated[/]" if built else "no")
        )
        size = f"{size_on_disk(image.folder) / 2**20:.0f} MiB" if image.folder.exists() else ""
        table.add_row(name, ", ".join(users), state, size, spec.wheel_arch, ", ".join(spec.python_packages))
    stdout.print(table)
    stdout.print(f"images live in {emulator_dir()}", highlight=False)


@app.command("build")
def build_image(
    name: Annotated[str, typer.Argument(help="Image name (e.g. rpi4) or an emulated target (e.g. rpi4-emu).")],
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when the cached image is current.")] = False,
    step_timeout: Annotated[
        float,
        typer.Option(
            "--step-timeout",
            min=1,
            metavar="SECONDS",
            help="Stop a network step (apt update, the download, pip) that runs longer; the build fails.",
        ),
    ] = 1800,
) -> None:
    """Build an image once: the board's Debian userland and runtime wheels, checked under QEMU; then cached."""
    from edgepipe.cli.optimize import ConsoleProgress
    from edgepipe.emulator.image import build, size_on_disk

    spec = _spec(name)
    progress = ConsoleProgress()
    try:
        image, cached = build(spec, progress, force=force, step_s=step_timeout)
    except BaseException:
        progress.finish(failed=True)
        raise
    progress.finish()
    manifest = image.manifest or {}
    check = manifest.get("check", {})
    packages = ", ".join(f"{k} {v}" for k, v in check.get("packages", {}).items())
    verb = "already built" if cached else "built"
    stdout.print(
        f"image {spec.image} {verb}: {check.get('machine')} Python {check.get('python')}, {packages}; "
        f"{size_on_disk(image.folder) / 2**20:.0f} MB in {image.folder}",
        highlight=False,
    )


@app.command("remove")
def remove_image(name: Annotated[str, typer.Argument(help="Image name or emulated target.")]) -> None:
    """Delete a built image from the cache."""
    from edgepipe.emulator.image import remove

    spec = _spec(name)
    stdout.print(f"removed {spec.image}" if remove(spec) else f"{spec.image} was not built", highlight=False)
