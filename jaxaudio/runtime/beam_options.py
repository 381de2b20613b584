"""Apache Beam's pipeline options on jaxaudio's command lines, shared by the commands that can
run on Beam (`search index`, `prepare`): Beam's own option names are taken off the command
line before absl reads it and handed to Beam untouched, a value Beam refuses is one
sentence, the worker count sizes the work, and on the local runner Beam's console chatter
goes to a file. Needs the `beam` extra (pip install 'jaxaudio[beam]').
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
from typing import Callable

# Beam warns on import, through the root logger, about Google Cloud clients it did not find
# (none is needed here): the console carries our lines.
logging.disable(logging.WARNING)
# pylint: disable=wrong-import-position
import apache_beam as beam  # noqa: E402
from apache_beam.options import pipeline_options as po  # noqa: E402

logging.disable(logging.NOTSET)

from jaxaudio.runtime.errors import JaxAudioError  # noqa: E402

# Pipeline option sets for the remote runners, as docs/guides show them; the tests parse each
# and build the pipeline under it (running one needs the cluster). Paths under /shared are a
# filesystem every worker mounts at that path: the audio, the exported model and --index.
EXAMPLE_OPTIONS = {
    "DataflowRunner": [
        "--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
        "--temp_location=gs://my-bucket/tmp", "--staging_location=gs://my-bucket/staging",
        # an image with jaxaudio[beam] installed and /shared mounted (Filestore or gcsfuse)
        "--sdk_container_image=europe-docker.pkg.dev/my-project/jaxaudio/beam:latest",
        "--experiments=use_runner_v2", "--machine_type=n2-standard-8",
        "--max_num_workers=32", "--number_of_worker_harness_threads=1"],
    "FlinkRunner": [
        "--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081", "--parallelism=16",
        "--environment_type=PROCESS",
        '--environment_config={"command": "/opt/jaxaudio/venv/bin/beam-boot"}',
        "--temp_location=/shared/tmp"],
    "SparkRunner": [
        "--runner=SparkRunner", "--spark_master_url=spark://spark-master:7077",
        "--environment_type=DOCKER",
        "--environment_config=registry.example.org/jaxaudio/beam:latest",
        "--temp_location=/shared/tmp"],
}


# --- command line ---------------------------------------------------------------------------

def _beam_parser() -> argparse.ArgumentParser:
  """An argparse parser that knows every pipeline option Beam defines (all PipelineOptions
  subclasses, runners' included), as PipelineOptions itself collects them."""
  parser = argparse.ArgumentParser(add_help=False)
  seen, todo = set(), [po.PipelineOptions]
  while todo:
    cls = todo.pop()
    for sub in cls.__subclasses__():
      if sub not in seen:
        seen.add(sub)
        todo.append(sub)
        try:
          sub._add_argparse_args(parser)  # pylint: disable=protected-access
        except argparse.ArgumentError:
          pass   # an option two classes define: the first one stands
  return parser


def beam_option_names() -> dict[str, bool]:
  """Every Beam pipeline option name (without --) -> whether it takes a value."""
  names = {}
  for action in _beam_parser()._actions:  # pylint: disable=protected-access
    for s in action.option_strings:
      if s.startswith("--"):
        names[s[2:]] = action.nargs != 0
  return names


def split_pipeline_args(argv: list[str], ours) -> tuple[list[str], list[str]]:
  """(argv without Beam's options, Beam's options): an option goes to Beam when Beam defines
  it and jaxaudio (the absl FlagValues `ours`) does not; ours win a name both use."""
  beam_names = beam_option_names()
  kept, passed, i = [argv[0]], [], 1
  while i < len(argv):
    arg = argv[i]
    name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
    if name is None or name in ours or name not in beam_names:
      kept.append(arg)
    else:
      passed.append(arg)
      if "=" not in arg and beam_names[name] and i + 1 < len(argv) and \
          not argv[i + 1].startswith("--"):
        passed.append(argv[i + 1])   # --runner DirectRunner
        i += 1
    i += 1
  return kept, passed


def pipeline_options(pipeline_args: list[str]) -> po.PipelineOptions:
  """Beam's PipelineOptions for `pipeline_args`, with a sentence for one Beam refuses."""
  given = " ".join(pipeline_args)
  if not any(a.startswith("--default_sdk_harness_log_level") for a in pipeline_args):
    pipeline_args = [*pipeline_args, "--default_sdk_harness_log_level=WARNING"]
  said = io.StringIO()   # argparse prints its complaint, then exits
  try:
    with contextlib.redirect_stderr(said):
      options = po.PipelineOptions(pipeline_args)
      options.get_all_options(retain_unknown_options=False)   # parses: bad values raise here
  except (SystemExit, ValueError) as err:
    why = (said.getvalue().strip().splitlines() or [str(err)])[-1].removeprefix(
        sys.argv[0].split("/")[-1] + ": ")
    raise JaxAudioError(f"Beam refuses the pipeline options {given} ({why}); see Beam's "
                        "pipeline options for the runner.") from None
  runner = options.get_all_options().get("runner")
  try:
    if runner:
      beam.runners.create_runner(runner)
  except ValueError as err:
    raise JaxAudioError(f"--runner={runner} is not a Beam runner ({err}); e.g. DirectRunner, "
                        "DataflowRunner, FlinkRunner or SparkRunner.") from None
  return options


def worker_count(options: po.PipelineOptions) -> int:
  """How many workers the runner is asked for, to size the shards: --direct_num_workers
  (0: every core) on the local runner, else --max_num_workers, --num_workers or
  --parallelism, whichever is given; 1 when none is."""
  every = options.get_all_options()
  if is_local(options):
    return int(every.get("direct_num_workers") or 0) or os.cpu_count() or 1
  for key in ("max_num_workers", "num_workers", "parallelism"):
    if every.get(key) and int(every[key]) > 0:
      return int(every[key])
  return 1


def is_local(options: po.PipelineOptions) -> bool:
  """Whether the pipeline runs on this machine (Beam's DirectRunner, its default)."""
  return options.get_all_options().get("runner") in (None, "DirectRunner", "direct",
                                                     "SwitchingDirectRunner")


@contextlib.contextmanager
def quiet(console: str | None):
  """On the local runner, Beam's and the worker processes' console output (gRPC channels,
  TensorFlow and XLA start-up lines) goes to the file `console` instead of stderr: the
  workers inherit file descriptor 2 when they start. Remote runners keep Beam's logging (the
  job's state and its console address)."""
  if console is None:
    yield
    return
  beam_log = logging.getLogger("apache_beam")
  level, beam_log.level = beam_log.level, logging.ERROR
  sys.stderr.flush()
  saved = os.dup(2)
  with open(console, "ab") as f:
    os.dup2(f.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    beam_log.setLevel(level)


def run_pipeline(options: po.PipelineOptions, build: Callable[[beam.Pipeline], None],
                 error: type[JaxAudioError], aftermath: str) -> None:
  """Build (`build(pipeline)`) and run one pipeline to its end. On the local runner the
  console of Beam and its workers goes to a file (quiet), removed when the run succeeds and
  named in the error when it fails; a failure of any kind is one sentence, an `error` that
  ends with `aftermath` (what state the command left, and what to do)."""
  local = is_local(options)
  console = os.path.join(tempfile.gettempdir(), f"jaxaudio-beam-{os.getpid()}.log")
  try:
    with quiet(console if local else None):
      with beam.Pipeline(options=options) as pipeline:
        build(pipeline)
  except Exception as err:   # a runner's own failure types vary; the sentence names it
    where = f" (the local workers' output is in {console})" if local else ""
    last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    raise error(f"the Beam pipeline failed ({type(err).__name__}: {last}){where}; "
                f"{aftermath}") from err
  if local and os.path.exists(console):
    os.remove(console)
