"""Shared command-line plumbing: absl entry, quiet logs, one-sentence errors, exit codes."""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app, logging

from jaxaudio.errors import JaxAudioError

EXIT_USER_ERROR = 2


def run(main: Callable[[list[str]], int | None]) -> None:
  """absl app.run(main), printing JaxAudioError as `error: <sentence>` and exiting 2."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
      print(f"error: unexpected arguments {argv[1:]}; flags are written --name=value.",
            file=sys.stderr)
      return EXIT_USER_ERROR
    try:
      return main(argv)
    except JaxAudioError as err:
      print(f"error: {err}", file=sys.stderr)
      return EXIT_USER_ERROR

  app.run(wrapped)
