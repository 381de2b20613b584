"""Label new recordings with a fine-tuned model.

  python -m jaxaudio.predict --workdir=RUN --audio=FILE_OR_DIR --out=predictions.csv
  python -m jaxaudio.predict --model=EXPORT --audio=long.wav --out=p.csv --windows \\
      --threshold=validation
  python -m jaxaudio.predict --workdir=RUN --audio=DIR --out=sel.txt --format=raven

Every file is decoded and cut into windows exactly as the run's training data was, the
windows go through the exported model (RUN/export/step_N, written on first use, or
--model), and each file gets the mean of its windows' probabilities — what `evaluate`
reports for a test clip. --windows adds a timeline per window and the events where a class
stays at or above its threshold (--threshold: a probability, or `validation` for per-class
thresholds chosen on the run's validation split). Files that cannot be decoded are reported
and skipped (--strict stops at the first); rows are written as files finish.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
import time

import numpy as np
from absl import flags

from jaxaudio.runtime.command import cli
from jaxaudio.inference import exported, writers
from jaxaudio.exports import stablehlo
from jaxaudio.models import outputs
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS
from jaxaudio.audio.featurize import Featurizer, auto_workers
from jaxaudio.audio.io import audio_files
from jaxaudio.runtime.errors import AudioError, ConfigError, JaxAudioError
from jaxaudio.evaluation import thresholds as validation_thresholds
from jaxaudio.runs.rundir import step_flag
from jaxaudio.inference.stream import (LOUDNESS_MODES, PCM_FORMATS, DeviceInput, Stream,
                                       pcm_blocks)

DEFAULT_THRESHOLD = 0.5   # events, and multi-label labels, when --threshold is not given

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m jaxaudio.main.")
_MODEL = flags.DEFINE_string("model", None, "An exported model (jaxaudio.exported) instead "
                             "of --workdir.")
_STEP = flags.DEFINE_string("step", "best", "--workdir: checkpoint: best, latest or a number.")
_AUDIO = flags.DEFINE_string("audio", None, "Audio file or folder (or --stream).")
_OUT = flags.DEFINE_string("out", None, "Output file (.csv, .json, or .txt for Raven); "
                           "--stream: the events CSV, appended as events end.",
                           required=True)
_JSON = flags.DEFINE_bool("json", False, "Write JSON instead of CSV.")
_FORMAT = flags.DEFINE_enum("format", "csv", ["csv", "raven"], "csv, or raven: a Raven "
                            "selection table of the detected events (implies --windows).")
_WINDOWS = flags.DEFINE_bool("windows", False, "Per-window timeline and detected events.")
_TOP_K = flags.DEFINE_integer("top_k", 1, "Most probable labels listed per file.",
                              lower_bound=1)
_THRESHOLD = flags.DEFINE_string("threshold", None, "Event and multi-label threshold: a "
                                 "probability (default 0.5) or `validation` (per class, best "
                                 "F1 on the run's validation split).")
_HOP = flags.DEFINE_float("hop", None, "Window hop as a fraction of a window (default: the "
                          "training data's; smaller = finer event times).")
_STRICT = flags.DEFINE_bool("strict", False, "Stop at the first file that cannot be decoded.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Decoding processes (0 = auto).")
_MAX_SECONDS = cli.max_seconds_flag(DEFAULT_MAX_SECONDS)
_BATCH = flags.DEFINE_integer("batch_size", 64, "Windows per forward pass.", lower_bound=1)
_STREAM = flags.DEFINE_bool("stream", False, "Live: read raw PCM from stdin (arecord, sox -d "
                            "-t raw -), print events as they end and append them to --out.")
_STREAM_FORMAT = flags.DEFINE_enum("stream_format", "s16le", list(PCM_FORMATS), "--stream: "
                                   "sample format of stdin.")
_STREAM_RATE = flags.DEFINE_integer("stream_rate", 0, "--stream: sample rate of stdin in Hz "
                                    "(0 = the model's; another is resampled).", lower_bound=0)
_STREAM_CHANNELS = flags.DEFINE_integer("stream_channels", 1, "--stream: interleaved channels "
                                        "(averaged to mono).", lower_bound=1)
_STREAM_DEVICE = flags.DEFINE_string("stream_device", None, "--stream: read a PortAudio input "
                                     "device (a microphone: its name or index from python -m "
                                     "sounddevice, or default) instead of stdin; Ctrl-C ends.")
_STREAM_SECONDS = flags.DEFINE_float("stream_seconds", 0.0, "--stream: stop after this many "
                                     "seconds of audio (0 = at the end of stdin, or Ctrl-C).",
                                     lower_bound=0.0)
_STREAM_LOUDNESS = flags.DEFINE_enum("stream_loudness", "running", list(LOUDNESS_MODES),
                                     "--stream: running = peak normalisation by the loudest "
                                     "sample so far; none = samples as they come.")


def _model() -> exported.ExportedModel:
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise JaxAudioError("predict needs exactly one of --workdir=RUN (a jaxaudio.main run) and "
                        "--model=EXPORT_DIR (a jaxaudio.exported model).")
  path = _MODEL.value or stablehlo.for_run(_WORKDIR.value, step_flag(_STEP.value, start=False))
  try:
    return exported.load(path)
  except ValueError as err:
    raise JaxAudioError(str(err)) from err


def _thresholds(model: exported.ExportedModel) -> np.ndarray | None:
  """Per-class thresholds from --threshold, or None when it is not given."""
  value = _THRESHOLD.value
  if value is None:
    return None
  if value == "validation":
    if _WORKDIR.value:
      mapping = validation_thresholds.as_mapping(validation_thresholds.for_run(
          _WORKDIR.value, step_flag(_STEP.value, start=False)))
    else:
      try:
        mapping = model.thresholds("validation")
      except ValueError as err:
        raise ConfigError(f"--threshold=validation: {err}") from err
    return outputs.thresholds_array(model.meta["classes"], mapping)
  try:
    cut = float(value)
  except ValueError:
    cut = -1.0
  if not 0.0 <= cut <= 1.0:
    raise ConfigError(f"--threshold={value} is neither a probability in [0, 1] nor "
                      "`validation`; pass e.g. --threshold=0.5.")
  return outputs.thresholds_array(model.meta["classes"], cut)


def _writer(model, windows: bool, thresholds):
  """The output writer of --format / --json. The `labels` column lists the classes at or
  above their threshold: when --threshold is given, and always for multi-label models
  (at 0.5 by default), whose top label alone says too little."""
  classes = list(model.meta["classes"])
  if _FORMAT.value == "raven":
    return writers.RavenWriter(_OUT.value, float(model.meta["frontend"]["fmax"]))
  listed = thresholds
  if listed is None and model.meta["multi_label"]:
    listed = outputs.thresholds_array(classes, DEFAULT_THRESHOLD)
  if _JSON.value:
    return writers.JsonWriter(_OUT.value, windows, _TOP_K.value if _TOP_K.value > 1 else 0,
                                  listed)
  return writers.CsvWriter(_OUT.value, classes, windows, _TOP_K.value, listed)


def _stream(model: exported.ExportedModel) -> int:
  """predict --stream: events (and with --windows each window's scores) as the audio comes."""
  meta = model.meta
  cuts = _thresholds(model)
  if cuts is None:
    cuts = outputs.thresholds_array(meta["classes"], DEFAULT_THRESHOLD)
  try:
    stream = Stream(model, meta, cuts, hop=_HOP.value, loudness=_STREAM_LOUDNESS.value,
                    batch_size=_BATCH.value)
  except ValueError as err:
    raise ConfigError(f"--hop: {err}") from err
  rate = _STREAM_RATE.value or int(meta["frontend"]["sample_rate"])
  skipped = [k for k in ("trim_db", "denoise") if float(meta["settings"].get(k, 0) or 0) > 0]
  if _STREAM_DEVICE.value:
    try:
      source = DeviceInput(_STREAM_DEVICE.value, _STREAM_FORMAT.value, _STREAM_CHANNELS.value,
                           rate, _STREAM_SECONDS.value)
    except RuntimeError as err:
      raise JaxAudioError(f"--stream_device: {err}.") from None
    signal.signal(signal.SIGINT, lambda *_: source.stop())   # Ctrl-C: close, flush events
    where, label = f"device {_STREAM_DEVICE.value!r}", f"device:{_STREAM_DEVICE.value}"
  else:
    source, where, label = sys.stdin.buffer, "stdin", "stdin"
  print(f"streaming: {_STREAM_FORMAT.value} {rate} Hz x{_STREAM_CHANNELS.value} from {where}, "
        f"window {stream.window_seconds:.2f} s every {stream.hop_seconds:.2f} s; loudness "
        f"{_STREAM_LOUDNESS.value}" + (f"; not applied live: {', '.join(skipped)}" if skipped
                                      else ""), file=sys.stderr)
  classes = list(meta["classes"])
  events = writers.EventsWriter(_OUT.value)
  out = csv.writer(sys.stdout)
  out.writerow(writers.EVENT_COLUMNS if not _WINDOWS.value
               else ["kind", "start", "end", "label"] + classes)
  found = 0
  blocks = pcm_blocks(source, _STREAM_FORMAT.value, _STREAM_CHANNELS.value, rate,
                      int(meta["frontend"]["sample_rate"]))
  if _STREAM_SECONDS.value and not _STREAM_DEVICE.value:
    blocks = _first_seconds(blocks, _STREAM_SECONDS.value, int(meta["frontend"]["sample_rate"]))
  try:
    for windows, ended in stream.run(blocks):
      if _WINDOWS.value:
        for s, e, row in zip(windows.start, windows.end, windows.probabilities):
          out.writerow(["window", f"{s:.3f}", f"{e:.3f}", classes[int(row.argmax())]]
                       + [f"{p:.6f}" for p in row])
      for ev in ended:
        row = writers.event_row(label, ev)
        out.writerow(row if not _WINDOWS.value else ["event"] + row[1:4] + [row[4]])
      events.add_events(label, ended)
      found += len(ended)
      sys.stdout.flush()
  finally:
    events.close()
  print(f"streamed {stream.seconds:.1f} s of audio: {found} events; wrote {_OUT.value}",
        file=sys.stderr)
  return 0


def _first_seconds(blocks, seconds: float, rate: int):
  """The blocks up to `seconds` of audio at `rate` (--stream_seconds on stdin)."""
  left = int(round(seconds * rate))
  for x in blocks:
    if left <= 0:
      return
    yield x[:left]
    left -= len(x)


def main(argv):
  del argv
  if _STREAM.value:
    if _AUDIO.value:
      raise JaxAudioError("--stream reads stdin; pass --stream or --audio, not both.")
    return _stream(_model())
  if not _AUDIO.value:
    raise JaxAudioError("predict needs --audio=FILE_OR_FOLDER, or --stream to read PCM from "
                        "stdin.")
  if not os.path.exists(_AUDIO.value):
    raise JaxAudioError(f"{_AUDIO.value}: no such audio file or folder; check --audio.")
  unlisted: list[dict[str, str]] = []
  files = audio_files(_AUDIO.value, unlisted)
  for s in unlisted:
    print(f"skipped: {s['reason']}", file=sys.stderr)
  if not files:
    raise JaxAudioError(f"{_AUDIO.value}: no audio files found (extensions: wav, flac, ogg, "
                        "mp3, ...); check --audio.")
  if _JSON.value and _FORMAT.value == "raven":
    raise JaxAudioError("--json and --format=raven are two output formats; pass one.")
  out_dir = os.path.dirname(os.path.abspath(_OUT.value))
  if not os.path.isdir(out_dir):
    raise JaxAudioError(f"{out_dir}: no such folder for --out; create it first.")
  model = _model()
  try:
    predictor = model.predictor(_HOP.value, _BATCH.value)
  except ValueError as err:
    raise ConfigError(f"--hop: {err}") from err
  windows = _WINDOWS.value or _FORMAT.value == "raven"
  thresholds = _thresholds(model)
  event_cuts = None
  if windows:
    event_cuts = (thresholds if thresholds is not None
                  else outputs.thresholds_array(predictor.classes, DEFAULT_THRESHOLD))
  writer = _writer(model, windows, thresholds)
  skipped, done, audio_seconds = [], 0, 0.0
  t0 = time.perf_counter()
  workers = _WORKERS.value or min(auto_workers(), max(1, len(files) // 8))
  featurizer = Featurizer(workers)
  try:
    tasks = ((i, p, None, 0) for i, p in enumerate(files))
    for res in featurizer.map(tasks, predictor.spec.to_dict(), predictor.settings,
                              total=len(files), desc="predict",
                              max_seconds=cli.seconds_limit(_MAX_SECONDS.value)):
      path = files[res.index]
      if res.error:
        if _STRICT.value:
          raise AudioError(f"{res.error} (--strict stops at the first bad file; without it "
                           "such files are reported and skipped)")
        skipped.append(path)
        print(f"skipped: {res.error}", file=sys.stderr)
        continue
      writer.add(predictor.predict(res, path, event_cuts))
      done += 1
      audio_seconds += res.seconds
  finally:
    featurizer.close()
    writer.close()
  wall = time.perf_counter() - t0
  print(f"predicted {done} files ({audio_seconds:.1f} s of audio) in {wall:.1f} s: "
        f"{done / wall:.1f} files/s, {audio_seconds / wall:.1f} s of audio per second; "
        f"skipped {len(skipped)} unreadable files")
  if not done:
    raise AudioError(f"none of the {len(files)} files under {_AUDIO.value} could be decoded; "
                     "see the skipped lines above.")
  for path in writer.paths:
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  cli.run(main)
