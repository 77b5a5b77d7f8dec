"""Measuring how long the GUI thread stops answering.

A precise QTimer ticks every few milliseconds on the GUI thread; the longest
gap between two ticks is the longest time the event loop was blocked. Used by
the tests and benchmarks to show that explanations never freeze the viewer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from qtpy.QtCore import QEventLoop, Qt, QTimer


@dataclass(frozen=True)
class StallReport:
    """Gaps between ticks, in seconds, over ``duration_s`` of event loop."""

    longest_s: float
    ticks: int
    duration_s: float
    interval_s: float

    @property
    def longest_ms(self) -> float:
        return 1000.0 * self.longest_s


class TickRecorder:
    """Records the times a timer fires on the thread that starts it."""

    def __init__(self, interval_ms: int = 10):
        self.interval_ms = interval_ms
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.times: list[float] = []

    def _tick(self) -> None:
        self.times.append(time.perf_counter())

    def start(self) -> None:
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> StallReport:
        self.timer.stop()
        self._tick()
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return StallReport(
            longest_s=max(gaps, default=0.0),
            ticks=len(self.times) - 2,
            duration_s=self.times[-1] - self.times[0],
            interval_s=self.interval_ms / 1000.0,
        )


def longest_stall(done: Callable[[], bool], *, timeout_s: float = 60.0, interval_ms: int = 10) -> StallReport:
    """Run the Qt event loop until ``done()`` is true and report the longest stall.

    ``done`` is polled on every tick. Raises :class:`TimeoutError` if it is
    still false after ``timeout_s``.
    """
    loop = QEventLoop()
    recorder = TickRecorder(interval_ms)

    def quit_when_done() -> None:
        if done():
            loop.quit()

    recorder.timer.timeout.connect(quit_when_done)
    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(loop.quit)
    deadline.start(int(timeout_s * 1000))
    recorder.start()
    if not done():
        loop.exec()
    report = recorder.stop()
    deadline.stop()
    if not done():
        raise TimeoutError(f"still running after {timeout_s:g} s")
    return report
