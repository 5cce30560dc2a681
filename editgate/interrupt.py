"""A cancelled CI job still leaves its report.

GitHub Actions cancels a job (and ends one past `timeout-minutes`) with SIGINT, then SIGTERM, then
SIGKILL a few seconds later. editgate turns the first SIGINT or SIGTERM into `Interrupted`, raised in
the main thread between two Python steps of the run (a forward pass or an optimiser step ends first,
well inside the grace period); the run then reports what it had done, with verdict `interrupted`.
Signals that follow are held back until the report is written, so the SIGTERM that comes after the
SIGINT cannot cut the report short.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was asked to stop. A BaseException, so no `except Exception` swallows it by accident."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class SignalGuard:
    """While `raising`, the first signal raises Interrupted; afterwards signals are only recorded."""

    def __init__(self) -> None:
        self.raising = True
        self.received: list[int] = []

    def handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        if self.raising:
            self.raising = False
            raise Interrupted(signum)

    def hold(self) -> None:
        """From now on (writing the report) signals are recorded, not raised."""
        self.raising = False


@contextmanager
def interruptible() -> Iterator[SignalGuard]:
    """SIGINT and SIGTERM as Interrupted inside the block; the previous handlers are restored after it."""
    guard = SignalGuard()
    previous = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, guard.handle)
    except ValueError:  # not the main thread (e.g. an embedding application): leave signals alone
        previous = {}
    try:
        yield guard
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
