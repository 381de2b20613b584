"""jaxaudio.runtime.progress: whole lines when stderr is a log, tqdm's bar on a terminal."""

import fcntl
import io
import os
import pty
import select
import struct
import termios

from tqdm import tqdm

from jaxaudio.runtime.progress import LogProgress, progress


def test_a_log_gets_whole_lines_at_most_every_interval_and_one_at_the_end():
  log = io.StringIO()
  with progress(410, "prepare train", "file", file=log) as bar:
    assert isinstance(bar, LogProgress)
    for _ in range(410):
      bar.update(1)
  lines = log.getvalue().splitlines()
  assert "\r" not in log.getvalue() and len(lines) == 1   # 410 quick updates: the last only
  assert lines[0].startswith("prepare train: 410/410 files (100%, ") and lines[0].endswith(" s)")

  log = io.StringIO()
  bar = progress(3, "sweep", "trial", initial=1, file=log, interval=0)   # a line per update
  bar.update(1)
  bar.write("worker 0: trial 2 finished")
  bar.update(1)
  bar.close()
  bar.close()                                        # closing twice prints nothing more
  lines = log.getvalue().splitlines()
  assert [line.split(" (")[0] for line in lines] == ["sweep: 2/3 trials",
                                                     "worker 0: trial 2 finished",
                                                     "sweep: 3/3 trials"]


def test_lines_come_at_most_every_interval_by_the_clock(monkeypatch):
  """A fake clock: updates 10 s apart with a 30 s interval print at 30 s, 60 s and the end."""
  import jaxaudio.runtime.progress as progress_module
  now = [100.0]
  monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
  log = io.StringIO()
  bar = progress(8, "embed", "file", file=log, interval=30)
  for _ in range(7):
    now[0] += 10.0
    bar.update(1)
  bar.close()
  assert log.getvalue().splitlines() == ["embed: 3/8 files (38%, 0.1 files/s, 30 s)",
                                         "embed: 6/8 files (75%, 0.1 files/s, 60 s)",
                                         "embed: 7/8 files (88%, 0.1 files/s, 70 s)"]


def _terminal(columns=100):
  """A pseudo-terminal the size of a real one (a bare pty is 0 columns wide, on which tqdm
  draws nothing): (leader fd, follower as a text file)."""
  leader, follower = pty.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
  return leader, os.fdopen(follower, "w")


def _shown(leader):
  """Everything written to the terminal so far."""
  out = b""
  while select.select([leader], [], [], 0.1)[0]:
    out += os.read(leader, 65536)
  return out.decode()


def test_a_terminal_gets_tqdms_redrawn_bar_and_no_desc_gets_nothing():
  leader, terminal = _terminal()
  with progress(5, "index", "file", file=terminal) as bar:
    assert isinstance(bar, tqdm)
    bar.update(2)
    bar.update(3)
  terminal.flush()
  shown = _shown(leader)
  # tqdm draws "index:   0%|   | 0/5 [...]" and redraws that line after a carriage return.
  draws = shown.rstrip("\r\n").split("\r")[1:]
  assert len(draws) >= 2 and "\n" not in shown.rstrip("\r\n"), repr(shown)
  assert draws[0].startswith("index:   0%|") and " 0/5 [" in draws[0], repr(shown)
  assert draws[-1].startswith("index: 100%|\u2588") and " 5/5 [" in draws[-1], repr(shown)
  assert draws[-1].endswith("file/s]") and len(draws[-1]) <= 100
  with progress(5, None, "file", file=terminal) as bar:   # no desc: nothing, even on a terminal
    bar.update(5)
  terminal.flush()
  assert _shown(leader) == ""
  terminal.close()
  os.close(leader)
  log = io.StringIO()
  with progress(5, None, "file", file=log) as bar:
    bar.update(5)
  assert log.getvalue() == ""
