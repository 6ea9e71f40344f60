"""A small seam between long-running work and whoever shows its progress (the CLI's rich display, or nothing)."""

from __future__ import annotations

from collections.abc import Mapping


class Progress:
    """Receives progress events; this base class ignores them (what tests and library callers get)."""

    def phase(self, text: str) -> None:
        """A new step begins (loading data, converting, verifying ...)."""

    def training_started(self, label: str, epochs: int) -> None:
        """Training of ``epochs`` epochs begins under ``label``."""

    def epoch_done(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Epoch ``epoch`` (1-based) ended with these metrics."""

    def training_done(self) -> None:
        """The current training ended."""

    def note(self, text: str) -> None:
        """Something the user should read (a choice made on their behalf, a warning)."""

    def upload_started(self, name: str, total: int) -> None:
        """``name`` (``total`` bytes) is being sent to the board."""

    def upload_advanced(self, done: int, total: int) -> None:
        """``done`` of ``total`` bytes of the current upload have been sent."""

    def upload_finished(self, name: str, total: int, stored: bool) -> None:
        """The board checked what arrived: ``stored`` when it holds ``name`` now (size and sha256 match)."""

    def upload_skipped(self, name: str, total: int) -> None:
        """The board already holds ``name`` (same sha256): nothing is sent."""

    def agent_event(self, event: Mapping[str, object]) -> None:
        """The device agent reported a step (``{"event": "phase", "phase": "warmup", ...}``)."""
