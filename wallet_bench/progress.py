"""A one-line progress bar on stderr (no dependency, redrawn a few times a second)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Shows completion against a duration or a request count, the rate and errors."""

    WIDTH = 30

    def __init__(
        self,
        *,
        label: str,
        duration_s: float | None = None,
        requests: int | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.duration_s = duration_s
        self.requests = requests
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._last_width = 0

    def fraction(self, done: int) -> float:
        if self.requests:
            return min(1.0, done / self.requests)
        if self.duration_s:
            return min(1.0, (time.monotonic() - self.started) / self.duration_s)
        return 0.0

    def render(self, done: int, errors: int) -> str:
        fraction = self.fraction(done)
        filled = int(fraction * self.WIDTH)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        return (
            f"{self.label} [{bar}] {fraction * 100:5.1f}%  {done} requests  "
            f"{done / elapsed:,.0f}/s  errors {errors}"
        )

    def update(self, done: int, errors: int) -> None:
        if not self.enabled:
            return
        line = self.render(done, errors)
        pad = max(0, self._last_width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._last_width = len(line)

    def close(self, done: int, errors: int) -> None:
        if not self.enabled:
            return
        self.update(done, errors)
        self.stream.write("\n")
        self.stream.flush()
