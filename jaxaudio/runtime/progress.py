"""Progress of long loops on stderr: tqdm's bar on a terminal, whole lines in a log.

A bar redraws itself with carriage returns, which a terminal shows as one moving line but a
log file (`| tee train.log` on a TPU VM, CI, nohup) keeps as one ever-growing line. When
stderr is not a terminal, progress is a plain line at most every LOG_INTERVAL seconds and
one at the end: `prepare train: 227/410 files (55%, 226.7 files/s, 1 s)`.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_INTERVAL = 30.0   # seconds between progress lines in a log


class LogProgress:
  """tqdm's update/write/close/n for a stream that is not a terminal."""

  def __init__(self, total: int, desc: str, unit: str, initial: int = 0, file=None,
               interval: float = LOG_INTERVAL):
    self.total, self.desc, self.unit, self.n = total, desc, unit, initial
    self.file = file or sys.stderr
    self.interval = interval
    self._start = self._last = time.monotonic()
    self._initial = self._shown = initial
    self._closed = False

  def update(self, n: int = 1) -> None:
    self.n += n
    now = time.monotonic()
    if now - self._last >= self.interval:
      self._line(now)

  def write(self, text: str, file=None) -> None:
    print(text, file=file or self.file, flush=True)

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      if self.n != self._shown or self.n == 0:
        self._line(time.monotonic())

  def _line(self, now: float) -> None:
    elapsed = now - self._start
    rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
    share = f"{100 * self.n / self.total:.0f}%, " if self.total else ""
    print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({share}{rate:.1f} {self.unit}s/s, "
          f"{elapsed:.0f} s)", file=self.file, flush=True)
    self._last, self._shown = now, self.n

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def progress(total: int, desc: str | None, unit: str, initial: int = 0, file=None,
             interval: float = LOG_INTERVAL):
  """A progress display for `total` items of `unit` on `file` (stderr): tqdm's bar when it
  is a terminal, LogProgress lines at most every `interval` seconds otherwise (0: a line per
  update, for slow items such as sweep trials); nothing at all when desc is None."""
  file = file or sys.stderr
  if desc is not None and not getattr(file, "isatty", lambda: False)():
    return LogProgress(total, desc, unit, initial, file, interval)
  return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file,
              disable=desc is None, mininterval=1.0, dynamic_ncols=True)
