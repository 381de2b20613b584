"""Prepare once: any source -> log-mel windows as a TFDS array_record dataset, with a report.

Layout of one prepared dataset (under data.prepared_dir, default <cache>/prepared):
  <source>-<key>/tfds/jaxaudio_prepared/1.0.0/*.array_record   Tensor features: mel float16
      [frames, mels], label (int64, or uint8 multi-hot [classes]), clip, window, offset
  <source>-<key>/meta.json     FrontendSpec, class names, settings, counts, cache key
  <source>-<key>/report.json, report.md    classes per split, durations, sample rates, skips
  <source>-<key>/COMPLETE      written last; the directory is renamed into place atomically

The key hashes the file listing (path, size, mtime), labels and splits, the FrontendSpec and
the preprocessing settings: a rerun is a no-op, a changed file triggers a rebuild, and an
interrupted run never leaves a dataset that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from collections import Counter
from typing import Any, Iterator

import numpy as np
from absl import logging as absl_logging

from jaxaudio.audio.io import DEFAULT_MAX_SECONDS
from jaxaudio.audio.spec import FrontendSpec, check_same_spec
from jaxaudio.audio import featurize
from jaxaudio.audio.featurize import Featurizer, auto_workers
from jaxaudio.data.listing import SPLITS, Listing
from jaxaudio.data.sources import list_source
from jaxaudio.runtime.cache import cache_dir
from jaxaudio.runtime.errors import DataError
from jaxaudio.runtime.bundle import write_bundle
from jaxaudio.runtime.progress import progress as progress_bar

FORMAT_VERSION = 2  # 2: mel stored as raw bytes
DATASET_NAME = "jaxaudio_prepared"
_DURATION_EDGES = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))


def settings_from_config(cfg) -> featurize.Settings:
  return featurize.Settings(loudness=str(cfg.loudness), loudness_db=float(cfg.loudness_db),
                            denoise=float(cfg.denoise), trim_db=float(cfg.trim_db),
                            window_hop=float(cfg.window_hop), min_seconds=float(cfg.min_seconds))


def cache_key(listing: Listing, spec: FrontendSpec, settings: featurize.Settings,
              max_seconds: float | None = DEFAULT_MAX_SECONDS) -> str:
  """The prepared data's identity; the duration limit enters it only when it is not the
  default (it decides which files are kept, and builds before it existed kept the same)."""
  blob = json.dumps({"format": FORMAT_VERSION, "source": listing.source, "tfds": listing.tfds,
                     "items": listing.fingerprint_items(), "classes": listing.classes,
                     "spec": spec.to_dict(), "settings": dataclasses.asdict(settings),
                     # trimming became librosa.effects.trim: earlier trimmed builds differ
                     **({"trim": "librosa"} if settings.trim_db > 0 else {}),
                     **({"max_seconds": max_seconds}
                        if max_seconds != DEFAULT_MAX_SECONDS else {})},
                    sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


@dataclasses.dataclass
class Prepared:
  """An opened prepared dataset."""

  root: str
  meta: dict[str, Any]

  @property
  def spec(self) -> FrontendSpec:
    return FrontendSpec.from_dict(self.meta["frontend_spec"])

  @property
  def classes(self) -> list[str]:
    return list(self.meta["classes"])

  @property
  def multi_label(self) -> bool:
    return bool(self.meta["multi_label"])

  def num_windows(self, split: str) -> int:
    return int(self.meta["splits"][split]["windows"])

  def data_source(self, split: str):
    """Random-access, TF-free reader of one split (a TFDS ArrayRecordDataSource)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    builder = tfds.builder_from_directory(
        os.path.join(self.root, "tfds", DATASET_NAME, "1.0.0"))
    return builder.as_data_source(split=split)


def is_complete(root: str) -> bool:
  return os.path.isfile(os.path.join(root, "COMPLETE"))


def open_prepared(root: str, expected_spec: FrontendSpec | None = None,
                  model: str = "the model") -> Prepared:
  if not is_complete(root):
    raise DataError(f"{root} is not a complete prepared dataset; run `python -m "
                    "jaxaudio.prepare --config=...` again.")
  with open(os.path.join(root, "meta.json")) as f:
    meta = json.load(f)
  prepared = Prepared(root, meta)
  if expected_spec is not None:
    check_same_spec(expected_spec, prepared.spec, what=f"prepared data {root}", model=model)
  return prepared


def featurize_tasks(listing: Listing, split: str) -> Iterator[tuple]:
  """featurize.run_task's tuples (index, path or None, waveform or None, rate[, segment]) in
  listing order; TFDS audio is read lazily."""
  clips = listing.split(split)
  if listing.tfds is None:
    for i, c in enumerate(clips):
      yield (i, c.path, None, 0) + ((c.span,) if c.span else ())
    return
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  t = listing.tfds
  ds = tfds.load(t["name"], split=t["splits"][split], data_dir=t["data_dir"], download=False)
  for i, (c, ex) in enumerate(zip(clips, tfds.as_numpy(ds))):
    yield i, c.path, ex[t["audio_key"]], t["sample_rate"]


def _report_markdown(report: dict[str, Any]) -> str:
  lines = [f"# Data report: {report['source']}", "",
           f"{report['files']} files in {report['seconds']:.1f} s "
           f"({report['files_per_second']:.1f} files/s); key {report['key']}", "",
           "| class | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
  for c in report["classes"]:
    lines.append(f"| {c} | " + " | ".join(
        str(report["splits"][s]["class_clips"].get(c, 0)) for s in SPLITS) + " |")
  lines += ["", "| split | clips | windows | skipped |", "|---|---|---|---|"]
  for s in SPLITS:
    d = report["splits"][s]
    lines.append(f"| {s} | {d['clips']} | {d['windows']} | {d['skipped']} |")
  lines += ["", "Durations (s): " + ", ".join(
      f"{lo:g}-{hi:g}: {n}" for lo, hi, n in zip(_DURATION_EDGES[:-1], _DURATION_EDGES[1:],
                                                  report["duration_histogram"]) if n),
            "", "Sample rates: " + ", ".join(f"{k} Hz: {v}" for k, v in
                                              sorted(report["sample_rates"].items()))]
  if any(report["splits"][s].get("groups") for s in SPLITS):
    lines += ["", "## Groups (data.group)", "", "| split | groups | clips per group (min-max) | "
              "groups |", "|---|---|---|---|"]
    for s in SPLITS:
      g = report["splits"][s].get("groups", {})
      names = ", ".join(list(g)[:12]) + (f" ... (+{len(g) - 12})" if len(g) > 12 else "")
      lines.append(f"| {s} | {len(g)} | {min(g.values(), default=0)}-{max(g.values(), default=0)}"
                   f" | {names} |")
    for s in ("validation", "test"):
      shared = sorted(set(report["splits"][s].get("groups", {}))
                      & set(report["splits"]["train"].get("groups", {})))
      lines += ["", f"**{len(shared)} group(s) of {s} also occur in train** "
                f"({', '.join(shared[:6])}): its figures include groups the model has heard."
                if shared else f"No group of {s} occurs in train."]
  if report["skipped"]:
    lines += ["", "## Skipped files", ""] + [f"- {s['reason']}" for s in report["skipped"]]
  if report["ignored"]:
    lines += ["", "## Ignored files", ""] + [f"- {s['path']}: {s['reason']}"
                                             for s in report["ignored"]]
  return "\n".join(lines) + "\n"


def _build(listing: Listing, spec: FrontendSpec, settings: featurize.Settings, out: str,
           workers: int, strict: bool, progress: bool, key: str,
           max_seconds: float | None, pipeline_args: list[str] | None = None) -> dict[str, Any]:
  """Featurize every clip (in worker processes, or with `pipeline_args` on Apache Beam) and
  write the TFDS dataset, meta.json and the report under `out`."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core.dataset_builders import adhoc_builder  # pylint: disable=import-outside-toplevel
  if pipeline_args:   # the optional `beam` extra
    from jaxaudio.data import beam_prepare  # pylint: disable=import-outside-toplevel

  tfds.disable_progress_bar()  # ours below shows files/s and ETA; TFDS's own would interleave
  classes = list(listing.classes)
  index = {c: i for i, c in enumerate(classes)}
  label_feature = (tfds.features.Tensor(shape=(len(classes),), dtype=np.uint8)
                   if listing.multi_label else tfds.features.Tensor(shape=(), dtype=np.int64))
  features = tfds.features.FeaturesDict({
      # BYTES: raw float16 instead of a protobuf float list; measured 32x faster to write
      # (0.19 vs 6.1 ms per window) and 2.2x faster to read.
      "mel": tfds.features.Tensor(shape=(spec.frames_per_window, spec.n_mels), dtype=np.float16,
                                  encoding=tfds.features.Encoding.BYTES),
      "label": label_feature,
      "clip": tfds.features.Tensor(shape=(), dtype=np.int64),
      "window": tfds.features.Tensor(shape=(), dtype=np.int64),
      "offset": tfds.features.Tensor(shape=(), dtype=np.float32),
  })
  report = {"source": listing.source, "key": key, "classes": classes, "skipped": [],
            "ignored": [{"path": p, "reason": r} for p, r in listing.ignored],
            "splits": {}, "sample_rates": Counter(), "durations": []}
  spec_dict = spec.to_dict()
  start = time.perf_counter()
  featurizer = None
  if pipeline_args:   # featurized on Beam's workers first, read back here in listing order
    tasks = {} if listing.tfds else {s: list(featurize_tasks(listing, s)) for s in SPLITS}
    on_beam = beam_prepare.featurize_on_beam(listing, tasks, spec_dict, settings, max_seconds,
                                             pipeline_args, os.path.join(out, "beam"), progress)

    def results(split):
      with progress_bar(len(listing.split(split)), f"prepare {split}" if progress else None,
                        "file") as bar:
        for res in on_beam(split):
          bar.update(1)
          yield res
  else:
    featurizer = Featurizer(workers)

    def results(split):
      return featurizer.map(featurize_tasks(listing, split), spec_dict, settings,
                            total=len(listing.split(split)),
                            desc=f"prepare {split}" if progress else None,
                            max_seconds=max_seconds)

  def generate(split):
    clips = listing.split(split)
    stats = {"clips": 0, "windows": 0, "skipped": 0, "class_clips": Counter(),
             "clip_keys": [], "groups": Counter()}
    report["splits"][split] = stats
    for res in results(split):
      clip = clips[res.index]
      if res.error:
        if strict:
          raise DataError(f"{res.error} (strict mode stops at the first bad file; "
                        "data.strict=False skips and reports such files)")
        report["skipped"].append({"path": clip.path or clip.key, "reason": res.error})
        stats["skipped"] += 1
        continue
      clip_id = stats["clips"]
      stats["clips"] += 1
      stats["clip_keys"].append(clip.key)
      stats["class_clips"].update(clip.labels)
      if clip.group:
        stats["groups"][clip.group] += 1
      report["durations"].append(res.seconds)
      report["sample_rates"][str(res.source_rate)] += 1
      if listing.multi_label:
        label = np.zeros(len(classes), np.uint8)
        label[[index[l] for l in clip.labels]] = 1
      else:
        label = index[clip.labels[0]]
      for w, (mel, offset) in enumerate(zip(res.windows, res.offsets)):
        stats["windows"] += 1
        yield f"{clip_id:08d}-{w:04d}", {"mel": mel, "label": label, "clip": clip_id,
                                         "window": w, "offset": offset}
    if stats["windows"] == 0:
      raise DataError(f"{listing.source}: every file of the {split} split was unreadable (see "
                      "the skipped files above); fix or replace them.")

  verbosity = absl_logging.get_verbosity()
  try:
    # TFDS prints "Downloading and preparing dataset ..." to stdout and warns that the new
    # folder has no dataset_info.json yet: notices about its internals, not for our users.
    absl_logging.set_verbosity(absl_logging.ERROR)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
      adhoc_builder.store_as_tfds_dataset(
          name=DATASET_NAME, version="1.0.0", features=features,
          split_datasets={s: generate(s) for s in SPLITS}, data_dir=os.path.join(out, "tfds"),
          file_format="array_record", disable_shuffling=True,
          description=f"jaxaudio log-mel windows of {listing.source}")
  finally:
    absl_logging.set_verbosity(verbosity)
    if featurizer is not None:
      featurizer.close()
    shutil.rmtree(os.path.join(out, "beam"), ignore_errors=True)
  elapsed = time.perf_counter() - start
  empty = [c for c in classes if report["splits"]["train"]["class_clips"].get(c, 0) == 0]
  if empty:
    raise DataError(f"{listing.source}: after skipping unreadable files, class(es) {empty[:5]} "
                    "have no training clips; fix those files or add clips.")
  n_files = sum(len(listing.split(s)) for s in SPLITS)
  hist = np.histogram(report["durations"], bins=_DURATION_EDGES)[0].tolist()
  report.update(seconds=elapsed, files=n_files, files_per_second=n_files / max(elapsed, 1e-9),
                duration_histogram=hist, duration_edges=list(_DURATION_EDGES[:-1]),
                sample_rates=dict(report["sample_rates"]))
  del report["durations"]
  for s in SPLITS:
    report["splits"][s]["class_clips"] = dict(report["splits"][s]["class_clips"])
    report["splits"][s]["groups"] = dict(sorted(report["splits"][s]["groups"].items()))
  meta = {"format": FORMAT_VERSION, "key": key, "source": listing.source,
          "frontend_spec": spec_dict, "classes": classes, "multi_label": listing.multi_label,
          "settings": dataclasses.asdict(settings),
          "splits": {s: {k: report["splits"][s][k] for k in ("clips", "windows", "clip_keys")}
                     for s in SPLITS}}
  for s in SPLITS:
    del report["splits"][s]["clip_keys"]
  with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump(meta, f)
  write_bundle(out, "report", report, _report_markdown(report))
  with open(os.path.join(out, "COMPLETE"), "w") as f:
    f.write(key + "\n")
  return report


def _tmp_prefix(root: str) -> str:
  """<root>.tmp-<host>-: builds by this host; on a filesystem shared by the hosts of a pod,
  other hosts' builds are never mistaken for dead ones of ours."""
  host = "".join(ch if ch.isalnum() else "_" for ch in socket.gethostname())
  return f"{root}.tmp-{host}-"


def _remove_stale_builds(root: str) -> None:
  """Delete this host's <root>.tmp-<host>-<pid> left by killed builds (their pid is gone)."""
  parent, prefix = os.path.dirname(root), os.path.basename(_tmp_prefix(root))
  for entry in os.listdir(parent):
    if not entry.startswith(prefix):
      continue
    try:
      pid = int(entry[len(prefix):])
      os.kill(pid, 0)
      if pid == os.getpid():
        raise ProcessLookupError
    except (ValueError, ProcessLookupError):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    except PermissionError:
      pass  # alive, another user's


def prepared_root(cfg) -> str:
  if cfg.prepared_dir:
    return os.path.abspath(os.path.expanduser(cfg.prepared_dir))
  return os.path.join(cache_dir(), "prepared")


def prepare(cfg, spec: FrontendSpec, progress: bool = True,
            pipeline_args: list[str] | None = None) -> tuple[Prepared, bool]:
  """Prepare the config's `data` section for `spec`; returns (prepared, built_now). With
  `pipeline_args` (Beam's options, --runner first) the clips are featurized on Apache Beam
  (jaxaudio.data.beam_prepare); the dataset is the same bytes either way."""
  listing = list_source(cfg)
  settings = settings_from_config(cfg)
  max_seconds = float(cfg.max_seconds) if cfg.max_seconds else None
  key = cache_key(listing, spec, settings, max_seconds)
  slug = "".join(ch if ch.isalnum() else "_" for ch in listing.source.split(":")[0])
  root = os.path.join(prepared_root(cfg), f"{slug}-{key}")
  if is_complete(root):
    if cfg.strict:  # strictness is not part of the key: re-check what the build skipped
      with open(os.path.join(root, "report.json")) as f:
        skipped = json.load(f)["skipped"]
      if skipped:
        raise DataError(f"{skipped[0]['reason']} (strict mode stops at the first bad file; "
                        f"{len(skipped)} were skipped in all)")
    return open_prepared(root, spec), False
  os.makedirs(os.path.dirname(root), exist_ok=True)
  _remove_stale_builds(root)
  tmp = f"{_tmp_prefix(root)}{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  workers = int(cfg.workers) or auto_workers()
  try:
    _build(listing, spec, settings, tmp, workers, bool(cfg.strict), progress, key, max_seconds,
           pipeline_args)
    # Another host or process may have finished the same build meanwhile: the rename is
    # atomic and fails onto an existing build, so the first finished build wins and no one
    # deletes a build that is complete (others may be reading it already).
    try:
      os.rename(tmp, root)
    except OSError as err:
      if not is_complete(root):
        raise DataError(f"{root} exists but holds no complete build (left by another "
                        f"program?); delete it and run again ({err}).") from err
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return open_prepared(root, spec), True
