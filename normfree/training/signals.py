"""Stopping cleanly on SIGTERM or Ctrl-C: finish the step, checkpoint, then leave.

Under DDP every process must stop at the same step, so the check is a collective: the first
signal any process got stops all of them, and every process reports that signal (the one it got
itself, or the one another process got), so every rank exits with the same code.
"""

import signal
import threading

from . import distributed


class StopOnSignal:
    """Within the `with` block, SIGTERM or SIGINT is recorded instead of stopping the process;
    a second Ctrl-C stops at once (`KeyboardInterrupt`)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.signal, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def requested(self, procs, device):
        """The `signal.Signals` that stops training, once any process got one, else None;
        under DDP all processes agree on it (the larger number if two arrived at once)."""
        mine = 0 if self.signal is None else int(self.signal)
        number = int(distributed.max_across(procs, mine, device))
        return signal.Signals(number) if number else None

    def _handle(self, number, frame):
        if self.signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signal.Signals(number)

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
