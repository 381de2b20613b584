"""jaxaudio.progress: whole lines when stderr is a log, tqdm's bar on a terminal."""

import io
import os
import pty

from tqdm import tqdm

from jaxaudio.progress import LogProgress, progress


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


def test_a_terminal_gets_tqdm_and_no_desc_gets_nothing():
  leader, follower = pty.openpty()
  with os.fdopen(follower, "w") as terminal, progress(5, "index", "file", file=terminal) as bar:
    assert isinstance(bar, tqdm)
    bar.update(5)
  os.close(leader)
  log = io.StringIO()
  with progress(5, None, "file", file=log) as bar:
    bar.update(5)
  assert log.getvalue() == ""
