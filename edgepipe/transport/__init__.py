"""Transports: how edgepipe reaches a board (``local`` subprocesses, ``ssh`` through paramiko, ``qemu``)."""

from __future__ import annotations

from edgepipe.config.target import Target
from edgepipe.transport.base import CommandResult, Transport


def open_transport(target: Target) -> Transport:
    """Connect to ``target``; paramiko is imported only for SSH targets."""
    if target.transport == "ssh":
        from edgepipe.transport.ssh import SshTransport

        return SshTransport(target)
    if target.transport == "qemu":
        from edgepipe.transport.qemu import QemuTransport

        return QemuTransport(target)
    from edgepipe.transport.local import LocalTransport

    return LocalTransport()


__all__ = ["CommandResult", "Transport", "open_transport"]
