"""Write embeddings of log-mel arrays or audio files with a pretrained or fine-tuned model.

  python -m jaxaudio.embed --model=aisfx --mel=windows.npy --out=emb.npz
  python -m jaxaudio.embed --model=musicnn_msd --audio=FOLDER --out=emb.npz
  python -m jaxaudio.embed --checkpoint=RUN_WORKDIR [--step=best] --audio=FOLDER --out=emb.npz

--mel: float32 [N, frames, mels] -> `embeddings` [N, D].
--audio: a file or folder -> window embeddings with `files` and `offsets` (seconds). A file
that cannot be decoded is reported and skipped unless --strict.
Models with a pretrained tag layer (musicnn, vgg) also write `taggram` [N, 50] (sigmoid) and
`tag_names`. --checkpoint takes a converted checkpoint, an original file, or the workdir of a
fine-tuned run (its model comes from the run; --step picks the checkpoint).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import flags

from jaxaudio.runtime.command import cli
from jaxaudio.runs import rundir
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS
from jaxaudio.inference.embedder import Embedder
from jaxaudio.audio.io import audio_files
from jaxaudio.runtime.errors import AudioError, CheckpointError, JaxAudioError
from jaxaudio.models.registry import get_model
from jaxaudio.weights.pretrained import pretrained_variables

_MODEL = flags.DEFINE_string("model", "aisfx", "Model name, e.g. aisfx, musicnn_msd or "
                             "panns_cnn14 (taken from the run with --checkpoint=RUN).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Converted checkpoint dir, original weights, or a fine-tuned run's "
    "workdir (default: the model's pretrained weights).")
_STEP = flags.DEFINE_string("step", "best", "With --checkpoint=RUN: best, latest or a step.")
_AUDIO = flags.DEFINE_string("audio", None, "Audio file or folder to embed.")
_MEL = flags.DEFINE_string("mel", None, ".npy of float32 log-mel windows [N, frames, mels].")
_OUT = flags.DEFINE_string("out", None, "Output .npz.", required=True)
_HOP = flags.DEFINE_float("hop", 0.5, "Window hop as a fraction of the model window.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Windows per forward pass.")
_STRICT = flags.DEFINE_bool("strict", False, "Stop at the first unreadable audio file.")
_MAX_SECONDS = cli.max_seconds_flag(DEFAULT_MAX_SECONDS)


def _load_mel(path: str, n_mels: int) -> np.ndarray:
  if not os.path.isfile(path):
    raise JaxAudioError(f"{path}: no such .npy file; check --mel.")
  try:
    mel = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as err:
    raise JaxAudioError(f"{path}: not a readable .npy array ({err}); save it with "
                        "numpy.save.") from err
  if mel.ndim != 3 or mel.shape[2] != n_mels:
    raise JaxAudioError(f"{path}: expected log-mel windows of shape [N, frames, {n_mels}], got "
                        f"{mel.shape}; compute them with this model's FrontendSpec.")
  return mel.astype(np.float32)


def _is_run(path: str | None) -> bool:
  return bool(path) and os.path.isfile(os.path.join(path, "config.json"))


def _embedder() -> Embedder:
  """The pretrained model named by --model, or the fine-tuned run at --checkpoint."""
  if _is_run(_CHECKPOINT.value):
    run = rundir.open_run(_CHECKPOINT.value, rundir.step_flag(_STEP.value, start=False))
    if flags.FLAGS["model"].present and _MODEL.value != run.info.name:
      raise CheckpointError(f"{_CHECKPOINT.value} is a fine-tuned '{run.info.name}' run, not "
                            f"'{_MODEL.value}'; drop --model (the run names its model).")
    print(f"embedding with the fine-tuned {run.info.name} of {run.workdir} at step {run.step}")
    return Embedder(run.info, run.variables, batch_size=_BATCH.value, module=run.model)
  info = get_model(_MODEL.value)
  variables, meta = pretrained_variables(info, _CHECKPOINT.value)
  if meta["model"] != info.name:
    raise CheckpointError(f"{_CHECKPOINT.value} holds a '{meta['model']}' model, not "
                          f"'{info.name}'; pass --model={meta['model']}.")
  return Embedder(info, variables, batch_size=_BATCH.value)


def main(argv):
  del argv
  if bool(_AUDIO.value) == bool(_MEL.value):
    raise JaxAudioError("pass exactly one of --audio=FILE_OR_DIR and --mel=ARRAY.npy.")
  embedder = _embedder()
  info = embedder.info
  start = time.perf_counter()
  if _MEL.value:
    emb, tags = embedder.embed_and_tag(_load_mel(_MEL.value, info.spec.n_mels))
    extra = {} if tags is None else {"taggram": tags, "tag_names": np.array(info.tag_names)}
    np.savez(_OUT.value, embeddings=emb, **extra)
    print(f"wrote {emb.shape[0]} embeddings of dim {emb.shape[1]} to {_OUT.value} "
          f"({emb.shape[0] / (time.perf_counter() - start):.1f} windows/s)")
    return 0
  unlisted: list[dict[str, str]] = []
  files = audio_files(_AUDIO.value, unlisted)
  for s in unlisted:
    print(f"skipped: {s['reason']}", file=sys.stderr)
  if not files:
    raise JaxAudioError(f"{_AUDIO.value}: no audio files found; check --audio.")
  names, offsets, embeddings, taggrams, skipped = [], [], [], [], []
  for path in files:
    try:
      windows, offs = embedder.file_windows(path, _HOP.value,
                                            cli.seconds_limit(_MAX_SECONDS.value))
    except AudioError as err:
      if _STRICT.value:
        raise
      skipped.append(path)
      print(f"skipped: {err}", file=sys.stderr)
      continue
    emb, tags = embedder.embed_and_tag(windows)
    embeddings.append(emb)
    if tags is not None:
      taggrams.append(tags)
    offsets.append(offs)
    names += [path] * len(offs)
  if not embeddings:
    raise JaxAudioError(f"none of the {len(files)} files under {_AUDIO.value} could be decoded.")
  emb = np.concatenate(embeddings)
  tags = ({"taggram": np.concatenate(taggrams), "tag_names": np.array(info.tag_names)}
          if taggrams else {})
  np.savez(_OUT.value, files=np.array(names), offsets=np.concatenate(offsets).astype(np.float32),
           embeddings=emb, **tags)
  print(f"wrote {emb.shape[0]} window embeddings from {len(files) - len(skipped)} files to "
        f"{_OUT.value}; skipped {len(skipped)} unreadable files")
  return 0


if __name__ == "__main__":
  cli.run(main)
