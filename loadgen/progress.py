"""A progress bar on stderr, standard library only: redrawn in place with \\r on a terminal,
a line per quarter otherwise (so that logs stay readable)."""

import sys
import time
from typing import TextIO

BAR_WIDTH = 30
"""Characters in the bar."""

REDRAW_INTERVAL = 0.1
"""Seconds between redraws on a terminal."""


class Progress:
    """Shows `label [#####-----] done/total extra`."""

    def __init__(self, *, stream: TextIO = sys.stderr, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.interactive = stream.isatty()
        self.last_draw = 0.0
        self.last_quarter = -1

    def update(self, label: str, done: int, total: int, extra: str = "", *, force: bool = False) -> None:
        if not self.enabled:
            return
        fraction = done / total if total else 1.0
        line = f"{label:<16} [{'#' * int(fraction * BAR_WIDTH):<{BAR_WIDTH}}] {done}/{total} {extra}"
        if self.interactive:
            now = time.monotonic()
            if force or now - self.last_draw >= REDRAW_INTERVAL:
                self.stream.write("\r" + line.ljust(79))
                self.stream.flush()
                self.last_draw = now
        elif (quarter := int(fraction * 4)) > self.last_quarter:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_quarter = quarter

    def finish(self, label: str, done: int, total: int, extra: str = "") -> None:
        """Draw the final state (always, even below 100 %) and end the line."""
        if self.enabled and self.interactive:
            self.update(label, done, total, extra, force=True)
            self.stream.write("\n")
        elif self.enabled and self.last_quarter < 4:
            self.last_quarter = -1
            self.update(label, done, total, extra)
        self.last_quarter = -1
