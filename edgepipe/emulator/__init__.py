"""Emulated boards: Debian userlands of a board's architecture, run with QEMU user-mode emulation."""

from edgepipe.emulator.image import Image, build, emulator_dir, image_for, remove

__all__ = ["Image", "build", "emulator_dir", "image_for", "remove"]
