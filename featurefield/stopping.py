"""Stopping a training cleanly: on SIGTERM or Ctrl-C the trainer finishes its step, writes a checkpoint
and exits, so a scheduler's time limit, a pre-emption or a `timeout` loses no steps.

A second signal while the first is being honoured interrupts at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import signal
import threading

from featurefield.errors import FeatureFieldError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(FeatureFieldError):
    """Training stopped on a signal after writing its checkpoint; ``exit_code`` is 128 + the signal number.

    The message is ``what`` happened, then ``how`` to go on (a command that started the training may say it in
    its own terms: :attr:`what` and :attr:`signum` are kept)."""

    def __init__(self, signum: int, what: str, how: str) -> None:
        super().__init__(f"{what}; {how}")
        self.signum, self.what = int(signum), what
        self.exit_code = 128 + int(signum)


class StopRequest:
    """A context manager that turns SIGINT / SIGTERM into a request to stop after the current step.

    ``bool(request)`` says whether one arrived; ``signal_name`` and ``signum`` say which. Signal handlers
    can only be installed from the main thread: elsewhere (a training started from a worker thread)
    the signals keep their usual behaviour and the request stays false.

    Args:
        interrupt_on_second: a second signal raises ``KeyboardInterrupt`` at once. Off for a rank of a
            torchrun job: the terminal's Ctrl-C reaches it directly and again through torchrun, which then
            waits 30 s for the checkpoint before it kills.
    """

    def __init__(self, interrupt_on_second: bool = True) -> None:
        self.signum: int | None = None
        self.interrupt_on_second = interrupt_on_second
        self._previous: dict[int, object] = {}

    @property
    def signal_name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if self.interrupt_on_second:
                raise KeyboardInterrupt
            return
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
