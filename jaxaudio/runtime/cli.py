"""Shared command-line plumbing: absl entry, quiet logs, one-sentence errors, exit codes."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging

from jaxaudio.runtime.errors import ConfigError, JaxAudioError

EXIT_USER_ERROR = 2


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing whose failures, config overrides included, are one sentence."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    _fail(f"{err}; see --helpfull.")
  except OSError as err:  # config_flags loads the file to apply an override: it is missing
    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), "")
    _fail(f"no such config file {path or '(none given)'}; pass --config=configs/finetune.py or "
          f"another configs/*.py ({str(err).splitlines()[0]}).")
  except (AttributeError, KeyError, TypeError, ValueError) as err:  # config_flags overrides
    # ml_collections words an unknown key as the repr of a KeyError ("\'key\'\nDid you mean
    # ..."): undo the escapes so the sentence reads as text.
    text = str(err.args[0]) if err.args else str(err)
    text = text.replace("\\n", "\n").replace("\\'", "'")
    name, _, hint = text.partition("\n")
    name = name.strip("\"' ")
    arg = next((a for a in argv[1:] if f".{name}=" in a or f".{name}." in a
                or a.endswith(f".{name}")), None)
    if isinstance(err, (AttributeError, KeyError)):
      hint = hint.strip().strip("\"'").rstrip("?")
      hint = f" ({hint}?)" if hint.startswith("Did you mean") else ""
      _fail(f"unknown config key in {arg or name}{hint}; docs/reference/config.md lists every key.")
    _fail(f"bad config override {arg or ''} ({' '.join(text.split())}); give a value of the "
          "key's type.")
  return argv


def max_seconds_flag(default: float) -> flags.FlagHolder:
  """--max_seconds for the commands that decode user files (default: jaxaudio.audio.io's
  DEFAULT_MAX_SECONDS, passed in so this module stays below audio), defined once per
  process."""
  if "max_seconds" in flags.FLAGS:
    return flags.FlagHolder(flags.FLAGS, flags.FLAGS["max_seconds"])
  return flags.DEFINE_float("max_seconds", default, "Longest audio file accepted, "
                            "in seconds (longer ones are refused before decoding; memory is "
                            "about 4 bytes per sample at the model's rate); 0 = no limit.",
                            lower_bound=0.0)


def seconds_limit(value: float) -> float | None:
  """A --max_seconds / data.max_seconds value as decoding takes it (0 = no limit = None)."""
  return float(value) if value else None


def load_config(holder):
  """The --config ConfigDict, or one sentence on why the file could not be loaded."""
  path = getattr(flags.FLAGS[holder.name], "config_filename", None)
  if path and not os.path.isfile(path.split(":")[0]):
    raise ConfigError(f"no such config file {path}; pass --config=configs/finetune.py or "
                      "another configs/*.py.")
  try:
    return holder.value
  except Exception as err:  # config_flags wraps whatever the file raised
    raise ConfigError(f"cannot load config {path} ({err}); fix the file.") from err


def _console_log() -> None:
  """jaxaudio's own lines on stderr as `HH:MM:SS message`, INFO and up; absl (and the
  orbax and TF logs that go through it) stays at WARNING."""
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log = logging.getLogger("jaxaudio")
  log.handlers = [handler]
  log.setLevel(logging.INFO)
  log.propagate = False


def take_beam_args(argv: list[str], command: str) -> tuple[list[str], list[str]]:
  """(argv for absl, Beam's pipeline options) of a command that runs on Apache Beam when given
  --runner: Beam's own option names go to Beam untouched (jaxaudio.runtime.beam_options,
  imported only then: Beam is the optional `beam` extra). Without --runner nothing is taken."""
  if not any(a == "--runner" or a.startswith("--runner=") for a in argv[1:]):
    return argv, []
  try:
    from jaxaudio.runtime import beam_options  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    print(f"error: --runner runs `{command}` on Apache Beam, which is not installed ({err}); "
          "pip install 'jaxaudio[beam]'.", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  return beam_options.split_pipeline_args(argv, flags.FLAGS)


def run(main: Callable[[list[str]], int | None], commands: tuple[str, ...] = ()) -> None:
  """absl app.run(main), printing JaxAudioError as `error: <sentence>` and exiting 2.

  With `commands`, exactly one of them must come first (`python -m M index --flags`) and
  main gets it as argv[1]; otherwise no positional argument is accepted."""
  _console_log()

  def wrapped(argv):
    absl_logging.set_verbosity(absl_logging.WARNING)
    if commands and (len(argv) < 2 or argv[1] not in commands):
      print(f"error: the first argument must be the command, one of: {', '.join(commands)}; "
            f"e.g. `{commands[0]} --flags` (see --helpfull).", file=sys.stderr)
      return EXIT_USER_ERROR
    if len(argv) > 1 + bool(commands):
      print(f"error: unexpected arguments {argv[1 + bool(commands):]}; flags are written "
            "--name=value.", file=sys.stderr)
      return EXIT_USER_ERROR
    try:
      return main(argv)
    except JaxAudioError as err:
      print(f"error: {err}", file=sys.stderr)
      return EXIT_USER_ERROR

  app.run(wrapped, flags_parser=_parse_flags)
