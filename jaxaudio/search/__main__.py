"""Query-by-example audio search with a fine-tuned model.

  python -m jaxaudio.search index --workdir=RUN --audio=FOLDER --index=PATH [--ann]
  python -m jaxaudio.search query --index=PATH --audio=FILE [--start=S --end=E] [--k=10] [--json]
  python -m jaxaudio.search serve --index=PATH [--host=127.0.0.1] [--port=8000] [--token=T]

Labels from search (agile modelling; jaxaudio/search/labels.py, learn.py):
  python -m jaxaudio.search label --index=PATH --file=F --start=S --end=E --label=CLASS [--negative]
  python -m jaxaudio.search label --index=PATH --from=RANKING.json --accept=1,3 [--reject=2]
  python -m jaxaudio.search labels --index=PATH [--export=labels.csv]
  python -m jaxaudio.search learn --index=PATH --label=CLASS[,CLASS...]
  python -m jaxaudio.search rank --index=PATH --label=CLASS --k=K [--strategy=top|margin|mixed|hybrid] [--json]
  python -m jaxaudio.search detect --index=PATH --label=CLASS [--threshold=T] --out=FILE [--format=csv|raven]

`index` embeds every audio file under FOLDER with the run's best checkpoint (exported to
RUN/export/ on first use; or pass --model=EXPORT_DIR) and brings PATH up to date: only new
or changed files are embedded, deleted ones are dropped. `query` prints the best-matching
files with the offset of their best window; --audio may be a folder (one query per file).
`serve` answers queries over HTTP (JSON API and a page to listen to the matches; see
jaxaudio/search/app.py) with the model and index kept loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import threadpoolctl
from absl import flags

from jaxaudio.runtime.command import cli
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS
from jaxaudio.runtime.errors import AudioError, JaxAudioError

_INDEX = flags.DEFINE_string("index", None, "Search index folder.", required=True)
_AUDIO = flags.DEFINE_string("audio", None, "index: folder to index; query: file or folder.")
_WORKDIR = flags.DEFINE_string("workdir", None, "index: run directory of jaxaudio.main.")
_STEP = flags.DEFINE_string("step", "best", "index: checkpoint: best, latest, a number, or "
                            "start (the weights the run started from, to compare with).")
_MODEL = flags.DEFINE_string("model", None, "index: an exported model (jaxaudio.exported) "
                             "instead of --workdir.")
_REBUILD = flags.DEFINE_bool("rebuild", False, "index: start over (e.g. with a new model).")


class _AnnParser(flags.BooleanParser):
  """--ann / --noann as a bool flag, and --ann=hnsw|ivfpq: the method (jaxaudio.search.ann)."""

  def parse(self, argument):
    if isinstance(argument, str) and argument.lower() in ("hnsw", "ivfpq"):
      return argument.lower()
    return super().parse(argument)


_ANN = flags.DEFINE_flag(flags.Flag(
    _AnnParser(), flags.ArgumentSerializer(), "ann", None, "index: build the approximate "
    "index (--ann: the method it had, else hnsw; --ann=hnsw or --ann=ivfpq, IVF-PQ codes for "
    "100M+ windows), or drop it (--noann); query: search it instead of exact search.",
    boolean=True))
_STRICT = flags.DEFINE_bool("strict", False, "index: stop at the first unreadable file.")
_HOP = flags.DEFINE_float("hop", None, "index: window hop as a fraction of a window (default: "
                          "the index's, or the model's training hop); smaller = finer offsets.")
_WORKERS = flags.DEFINE_integer("workers", 0, "index: featurisation processes (0 = auto).")
_COMMIT_FILES = flags.DEFINE_integer("commit_files", None, "index: commit (a new segment and "
                                     "manifest) after this many embedded files (default 256); "
                                     "a kill loses at most one interval.", lower_bound=1)
_COMMIT_SECONDS = flags.DEFINE_float("commit_seconds", None, "index: ... or after this many "
                                     "seconds, whichever comes first (default 60).",
                                     lower_bound=0.1)
_START = flags.DEFINE_float("start", None, "query: start of the query span, seconds.")
_END = flags.DEFINE_float("end", None, "query: end of the query span, seconds.")
_K = flags.DEFINE_integer("k", 10, "query: results per query.", lower_bound=1)
_MAX_SECONDS = cli.max_seconds_flag(DEFAULT_MAX_SECONDS)
_PER_FILE = flags.DEFINE_bool("per_file", True, "query: one hit per file (its best window); "
                              "--noper_file ranks windows.")
_EF = flags.DEFINE_integer("ef", 128, "query --ann: HNSW search breadth (recall vs speed).")
_NPROBE = flags.DEFINE_integer("nprobe", None, "query --ann and serve on an IVF-PQ index: lists "
                               "scanned (default: the smallest that reached recall@10 0.95 at "
                               "build).")
_SHARDS = flags.DEFINE_list("shards", [], "index: write --index as a sharded index of these "
                            "index folders (comma-separated), searched as one.")
_JSON = flags.DEFINE_bool("json", False, "query: print JSON instead of a table.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: address to bind (127.0.0.1 = this "
                            "machine only; 0.0.0.0 = every interface).")
_PORT = flags.DEFINE_integer("port", 8000, "serve: TCP port.", lower_bound=0, upper_bound=65535)
_TOKEN = flags.DEFINE_string("token", None, "serve: every API call must carry this token "
                             "(Authorization: Bearer TOKEN, or ?token=TOKEN).")
_MAX_UPLOAD = flags.DEFINE_float("max_upload_mb", 50.0, "serve: largest upload accepted, MB.",
                                 lower_bound=0.001)
_MAX_UPLOAD_SECONDS = flags.DEFINE_float(
    "max_upload_seconds", 600.0, "serve: longest upload decoded, seconds of audio as its "
    "header declares them (longer ones get 413 before anything is decoded).", lower_bound=0.1)
_ALLOW_HOST = flags.DEFINE_multi_string(
    "allow_host", [], "serve: another name the server answers to in the Host header (repeat "
    "or comma-separate; '*' for any); besides --host and, on loopback, localhost.")
_ALLOW_ORIGIN = flags.DEFINE_multi_string(
    "allow_origin", [], "serve: a web origin allowed to call the API from its pages (CORS; "
    "none by default), e.g. https://tools.example.org.")
_SHOW_PATHS = flags.DEFINE_bool("show_paths", False, "serve: responses show the index's and "
                                "its files' paths on the server (by default names and ids only).")
_BATCHING = flags.DEFINE_bool("batching", True, "serve: batch concurrent requests' forward "
                              "passes; --nobatching runs them one at a time under a lock.")
_BATCH_WINDOW_MS = flags.DEFINE_float("batch_window_ms", None, "serve: how long a forward pass "
                                      "waits for other requests' windows, ms (default: 0 on "
                                      "CPU, 2 on GPU/TPU).", lower_bound=0)
_MAX_BATCH = flags.DEFINE_integer("max_batch", None, "serve: windows per batched forward pass, "
                                  "a power of two (default: 4 on CPU, 64 on GPU/TPU).",
                                  lower_bound=1)
_LABEL = flags.DEFINE_list("label", [], "label/learn/rank/detect: the class (learn: one or "
                           "more, comma-separated).")
_LABELS = flags.DEFINE_string("labels", None, "label database: an SQLAlchemy URL such as "
                              "postgresql://USER@HOST/DB for a team (default: PATH/labels.sqlite).")
_FILE = flags.DEFINE_string("file", None, "label: the indexed file the span belongs to.")
_NEGATIVE = flags.DEFINE_bool("negative", False, "label: the span does not hold the class.")
_FROM = flags.DEFINE_string("from", None, "label: a ranking or query written with --json; "
                            "--accept/--reject name its results by rank (1-based).")
_ACCEPT = flags.DEFINE_list("accept", [], "label --from: ranks that hold the class ('all' for "
                            "every result).")
_REJECT = flags.DEFINE_list("reject", [], "label --from: ranks that do not hold it ('rest' for "
                            "every result not accepted).")
_STRATEGY = flags.DEFINE_enum("strategy", "top", ["top", "margin", "mixed", "hybrid"], "rank: "
                              "the classifier's best windows, the least certain ones, both, or "
                              "the positives' nearest neighbours until a class has 20 positive "
                              "labels, then the best.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "detect: probability cut (default: the "
                                "classifier's cross-validated threshold).")
_OUT = flags.DEFINE_string("out", None, "detect: the events file to write.")
_FORMAT = flags.DEFINE_enum("format", "csv", ["csv", "raven"], "detect: csv (file, start, end, "
                            "label, peak) or a Raven selection table.")
_EXPORT = flags.DEFINE_string("export", None, "labels: write every label to this CSV, the "
                              "training set --config.data.source=csv:FILE reads.")
_WEAK_WEIGHT = flags.DEFINE_float("weak_weight", 0.05, "learn: weight of each unlabelled "
                                  "window as a negative (1 = a labelled negative).",
                                  lower_bound=0.0)
_MAX_QUEUED = flags.DEFINE_integer("max_queued", 64, "serve: forward passes that may wait; "
                                   "more are refused with 503 and Retry-After.", lower_bound=1)


# `index --runner=...`: Beam's pipeline options, taken off the command line before absl reads
# it (cli.take_beam_args); empty runs the single-process indexer.
_PIPELINE_ARGS: list[str] = []


def _need_audio(command: str) -> str:
  if not _AUDIO.value:
    raise JaxAudioError(f"{command} needs --audio=FILE_OR_FOLDER.")
  return _AUDIO.value


def _index() -> int:
  # pylint: disable=import-outside-toplevel
  from jaxaudio.exports import stablehlo
  from jaxaudio.search.indexer import update
  from jaxaudio.runs.rundir import step_flag
  if _SHARDS.value:
    from jaxaudio.search import shards
    done = shards.write(_INDEX.value, _SHARDS.value)
    print(f"sharded index {os.path.abspath(_INDEX.value)}: {done['shards']} shards, "
          f"{done['files']} files, {done['rows']} windows")
    return 0
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise JaxAudioError("index needs exactly one of --workdir=RUN (a jaxaudio.main run) and "
                        "--model=EXPORT_DIR (a jaxaudio.exported model).")
  audio = _need_audio("index")
  export_dir = _MODEL.value or stablehlo.for_run(_WORKDIR.value, step_flag(_STEP.value))
  if _PIPELINE_ARGS:   # on Beam: the runner's workers embed, the driver commits
    from jaxaudio.search import beam_index
    summary = beam_index.update(_INDEX.value, audio, export_dir, _PIPELINE_ARGS,
                                rebuild=_REBUILD.value, strict=_STRICT.value,
                                with_ann=_ANN.value, hop=_HOP.value,
                                max_seconds=cli.seconds_limit(_MAX_SECONDS.value),
                                commit_files=_COMMIT_FILES.value,
                                commit_seconds=_COMMIT_SECONDS.value)
  else:
    summary = update(_INDEX.value, audio, export_dir, rebuild=_REBUILD.value,
                     strict=_STRICT.value, with_ann=_ANN.value, workers=_WORKERS.value,
                     hop=_HOP.value, max_seconds=cli.seconds_limit(_MAX_SECONDS.value),
                     commit_files=_COMMIT_FILES.value, commit_seconds=_COMMIT_SECONDS.value)
  for s in summary["skipped"]:
    print(f"skipped: {s['reason']}")
  print(f"index {summary['index']}: {summary['files']} files, {summary['rows']} windows "
        f"(added {summary['added']}, updated {summary['updated']}, removed "
        f"{summary['removed']}, unchanged {summary['unchanged']}, skipped "
        f"{len(summary['skipped'])}; {summary['files_per_second']:.1f} files/s, "
        f"{summary['seconds']:.1f} s)")
  if summary["ann_recall_at_10"] is not None:
    print(f"approximate index: recall@10 {summary['ann_recall_at_10']:.4f} against exact search")
  return 0


def _query() -> int:
  # pylint: disable=import-outside-toplevel
  from jaxaudio.audio.io import audio_files
  from jaxaudio.search.searcher import Searcher
  audio = _need_audio("query")
  if not os.path.exists(audio):
    raise JaxAudioError(f"{audio}: no such audio file or folder; check --audio.")
  searcher = Searcher(_INDEX.value, use_ann=bool(_ANN.value), ef=_EF.value,
                      nprobe=_NPROBE.value)
  limit = cli.seconds_limit(_MAX_SECONDS.value)
  skipped: list[dict[str, str]] = []
  paths, queries = [], []
  for p in audio_files(audio, skipped):
    try:
      queries.append(searcher.embed_windows(
          searcher.query_windows(p, _START.value, _END.value, limit)))
      paths.append(p)
    except AudioError as err:
      if os.path.isfile(audio):
        raise
      skipped.append({"path": p, "reason": str(err)})
  for s in skipped:
    print(f"skipped: {s['reason']}", file=sys.stderr)
  if not paths:
    raise JaxAudioError(f"{audio}: no audio file there could be queried"
                        f"{' (see the skipped lines above)' if skipped else ''}; pass an "
                        "audio file or a folder holding some.")
  results = searcher.search(queries, _K.value, _PER_FILE.value)
  if _JSON.value:
    out = [{"query": os.path.abspath(p), "start": _START.value, "end": _END.value,
            "windows": len(q), "results": [dataclasses.asdict(h) for h in hits]}
           for p, q, hits in zip(paths, queries, results)]
    print(json.dumps(out[0] if os.path.isfile(audio) else out, indent=1))
    return 0
  for p, q, hits in zip(paths, queries, results):
    print(f"query {p} ({len(q)} windows)")
    print("rank   score  offset s  file")
    for rank, h in enumerate(hits, 1):
      print(f"{rank:4d}  {h.score:.4f}  {h.offset:8.2f}  {h.file}")
  return 0


def _serve() -> int:
  # pylint: disable=import-outside-toplevel
  import uvicorn
  from jaxaudio.search.app import create_app
  from jaxaudio.search.http_guards import EVERY_INTERFACE
  app = create_app(_INDEX.value, use_ann=bool(_ANN.value), ef=_EF.value, token=_TOKEN.value,
                   max_upload_mb=_MAX_UPLOAD.value, host=_HOST.value,
                   allow_hosts=_ALLOW_HOST.value, allow_origins=_ALLOW_ORIGIN.value,
                   show_paths=_SHOW_PATHS.value, max_upload_seconds=_MAX_UPLOAD_SECONDS.value,
                   batching=_BATCHING.value, batch_window_ms=_BATCH_WINDOW_MS.value,
                   max_batch=_MAX_BATCH.value, max_queued=_MAX_QUEUED.value,
                   warm=True, labels_at=_LABELS.value, nprobe=_NPROBE.value)
  # The server's parallelism is its requests, so numpy's BLAS (the log-mel filterbank product
  # of every upload) runs single-threaded in each request's thread: threaded OpenBLAS, called
  # from 16 request threads at once, spent most of the server's CPU in that one product
  # (bench/bench_serve.py; docs/evidence/speed.md).
  threadpoolctl.threadpool_limits(limits=1, user_api="blas")
  info = app.state.service.current()
  where = f"http://{_HOST.value}:{_PORT.value}/"
  print(f"serving {app.state.service.path}: {len(info.files)} files, "
        f"{info.exact.manifest.live_rows} windows, model {info.exact.manifest.model['model']}")
  print(f"page {where}{'?token=...' if _TOKEN.value else ''}   API docs {where}docs   "
        "(Ctrl-C stops)")
  if _HOST.value not in ("127.0.0.1", "localhost", "::1") and not _TOKEN.value:
    print(f"note: bound to {_HOST.value} without --token: anyone who reaches this port can "
          "query the index and listen to its files.")
  if _HOST.value in EVERY_INTERFACE and "*" not in app.state.allowed_hosts:
    print(f"answers to the Host names {', '.join(app.state.allowed_hosts)}; add others (a DNS "
          "name, an interface address) with --allow_host=NAME.")
  uvicorn.run(app, host=_HOST.value, port=_PORT.value, log_level="warning")
  return 0


def _label_store():
  # pylint: disable=import-outside-toplevel
  from jaxaudio.search.labels import LabelStore
  return LabelStore(_LABELS.value or _INDEX.value)


def _one_label(command: str) -> str:
  if len(_LABEL.value) != 1:
    raise JaxAudioError(f"{command} needs one class: --label=CLASS.")
  return _LABEL.value[0]


def _label() -> int:
  # pylint: disable=import-outside-toplevel
  from jaxaudio.search import agile
  archive = agile.open_archive(_INDEX.value)
  if _FROM.value:
    stored = agile.label_ranking(archive, _label_store(), _FROM.value, _ACCEPT.value,
                                 _REJECT.value, _LABEL.value[0] if _LABEL.value else None)
  else:
    if _FILE.value is None or _START.value is None or _END.value is None:
      raise JaxAudioError("label needs --file=F --start=S --end=E --label=CLASS (or --from="
                          "RANKING.json --accept=...).")
    stored = agile.label_span(archive, _label_store(), _FILE.value, _START.value, _END.value,
                              _one_label("label"), not _NEGATIVE.value)
  for lab in stored:
    print(f"{'yes' if lab.positive else 'not'} {lab.label}: {lab.file} {lab.start:.3f}-"
          f"{lab.end:.3f} s")
  print(f"stored {len(stored)} label(s)")
  return 0


def _list_labels() -> int:
  # pylint: disable=import-outside-toplevel
  from jaxaudio.search import agile
  counts, written = agile.list_labels(_INDEX.value, _label_store(), _EXPORT.value)
  for name, c in counts.items():
    print(f"{name}: {c['positive']} positive, {c['negative']} negative")
  if written:
    print(f"wrote {written}")
  return 0


def _learn() -> int:
  # pylint: disable=import-outside-toplevel
  from jaxaudio.search import learn
  if not _LABEL.value:
    raise JaxAudioError("learn needs --label=CLASS[,CLASS...].")
  for clf in learn.learn(_INDEX.value, _LABEL.value, _label_store().all(), _WEAK_WEIGHT.value):
    st = clf.stats
    print(f"{clf.label}: {st['labels']['positive']} positive / {st['labels']['negative']} "
          f"negative labels ({st['positive_windows']} / {st['negative_windows']} windows, "
          f"{st['weak_windows']} weak negatives); threshold {clf.threshold:.3f} "
          f"({st['threshold_from']}): precision {st['precision_at_threshold']:.2f}, recall "
          f"{st['recall_at_threshold']:.2f} on the labelled windows; {st['seconds']:.1f} s")
  return 0


def _rank() -> int:
  # pylint: disable=import-outside-toplevel
  from jaxaudio.search import agile
  ranking = agile.ranking(_INDEX.value, _label_store(), _one_label("rank"), _K.value,
                          _STRATEGY.value)
  if _JSON.value:
    print(json.dumps(ranking, indent=1))
    return 0
  print(f"{ranking['label']} ({ranking['strategy']}; threshold {ranking['threshold']:.3f})")
  print("rank   score  offset s  file")
  for i, h in enumerate(ranking["results"], 1):
    print(f"{i:4d}  {h['score']:.4f}  {h['offset']:8.2f}  {h['file']}")
  return 0


def _detect() -> int:
  # pylint: disable=import-outside-toplevel
  from jaxaudio.search import agile
  if not _OUT.value:
    raise JaxAudioError("detect needs --out=FILE for the events.")
  n, files = agile.write_detections(_INDEX.value, _one_label("detect"), _THRESHOLD.value,
                                    _OUT.value, _FORMAT.value)
  print(f"{n} events in {files} files; wrote {_OUT.value}")
  return 0


COMMANDS = {"index": _index, "query": _query, "serve": _serve, "label": _label,
            "labels": _list_labels, "learn": _learn, "rank": _rank, "detect": _detect}


def main(argv):
  if _PIPELINE_ARGS and argv[1] != "index":
    raise JaxAudioError(f"{' '.join(_PIPELINE_ARGS)}: Beam pipeline options are for `index` "
                        f"only, not `{argv[1]}`; leave them out.")
  return COMMANDS[argv[1]]()


if __name__ == "__main__":
  sys.argv, _PIPELINE_ARGS[:] = cli.take_beam_args(sys.argv, "search index")
  cli.run(main, commands=tuple(COMMANDS))
