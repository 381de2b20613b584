"""The search routes of the HTTP API: query by example, classify, an indexed file's audio and
waveform, what is served, liveness. Each request's windows go through the micro-batcher
(batching.py) or, with batching off, one lock per request; decoding is bounded by the
server's upload limit, so a tiny file that claims hours is refused before it is decoded."""

from __future__ import annotations

import contextlib
import functools
import math
import mimetypes
import os
import re
import tempfile
from typing import Any

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from jaxaudio.audio.io import DEFAULT_MAX_SECONDS, read_audio
from jaxaudio.inference.predictor import Predictor
from jaxaudio.models.outputs import l2_normalise
from jaxaudio.runtime.errors import AudioError
from jaxaudio.search import store
from jaxaudio.search.batching import Batcher, BatchedModel, Busy
from jaxaudio.search.http_guards import ApiError
from jaxaudio.search.service import Loaded, Service, file_id

RETRY_AFTER_SECONDS = 1


@contextlib.contextmanager
def _refused_when_busy():
  """Busy (the batcher's queue is full) as a 503 answer with Retry-After."""
  try:
    yield
  except Busy as err:
    raise ApiError(503, "the server is busy (its queue of forward passes is full); retry in "
                   f"{RETRY_AFTER_SECONDS} s.",
                   headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from err


def _query_file(loaded: Loaded, upload_path: str | None, file: str | None) -> tuple[str, str]:
  """(path to decode, name to show) of an uploaded file or an indexed one."""
  if upload_path is not None:
    return upload_path, "upload"
  entry = loaded.files.get(file or "")
  if entry is None:
    raise ApiError(404, f"no indexed file has id {file!r}; take ids from /api/query results.")
  return entry.path, os.path.basename(entry.path)


def _span(start: float | None, end: float | None, limit: float
          ) -> tuple[float | None, float | None]:
  """The query span, refused unless finite, 0 <= start < end, and end within `limit` (the
  longest audio this request may decode, so a huge end cannot be a span of any clip)."""
  for name, value in (("start", start), ("end", end)):
    if value is not None and not (math.isfinite(value) and 0 <= value <= limit):
      raise ApiError(400, f"{name}={value} is outside 0-{limit:g} s (the longest audio this "
                     f"server decodes); pass a {name} in seconds inside the clip.")
  if end is not None and end <= (start or 0.0):
    raise ApiError(400, f"start={start} end={end} is not a span; pass 0 <= start < end "
                   "(seconds).")
  return start, end


def _audio_refusal(err: AudioError, path: str, name: str, limit: float, upload: bool
                   ) -> ApiError:
  """The HTTP answer to audio that cannot be decoded: 413 when it is longer than the limit
  (jaxaudio.audio.io and featurize word that refusal "... longer than ..."), else 400, with
  the temporary or indexed path replaced by the name the client knows."""
  message = str(err).replace(path, name)
  if " longer than " in message:
    fix = ("start the server with a larger --max_upload_seconds" if upload else
           "index shorter files")
    return ApiError(413, f"{name}: the audio is longer than the server's limit of {limit:g} s; "
                    f"send a shorter clip or {fix}.")
  return ApiError(400, message)


@functools.lru_cache(maxsize=256)
def _envelope(path: str, mtime_ns: int, bins: int) -> dict[str, Any]:
  del mtime_ns  # part of the cache key: a changed file gets a new envelope
  x, rate = read_audio(path)
  edges = np.linspace(0, len(x), bins + 1).astype(int)
  peaks = [float(np.max(np.abs(x[a:b]))) if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])]
  top = max(peaks) or 1.0
  return {"seconds": len(x) / rate, "peaks": [round(p / top, 4) for p in peaks]}


def router(service: Service, batcher: Batcher | None, *, show_paths: bool = False,
           max_upload_seconds: float) -> APIRouter:
  """The routes over `service`; `batcher` None: one lock per request's forward pass and
  search (the older path, kept for comparison)."""
  api = APIRouter()

  def decode_limit(upload_path: str | None) -> float:
    return max_upload_seconds if upload_path is not None else DEFAULT_MAX_SECONDS

  def run_query(upload_path, file, start, end, k, per_file, ann) -> dict[str, Any]:
    loaded = service.current()
    searcher = loaded.exact
    if ann if ann is not None else service.default_ann:
      if loaded.approx is None:
        raise ApiError(400, "this index has no approximate search; build it with python -m "
                       "jaxaudio.search index --ann, or query with ann=false.")
      searcher = loaded.approx
    limit = decode_limit(upload_path)
    start, end = _span(start, end, limit)
    path, name = _query_file(loaded, upload_path, file)
    try:
      windows = searcher.query_windows(path, start, end, max_seconds=limit)
    except AudioError as err:
      raise _audio_refusal(err, path, name, limit, upload_path is not None) from err
    if batcher is None:
      with service.model_lock:
        query = searcher.embed_windows(windows)
        (hits,) = searcher.search([query], k, per_file)
    else:
      with _refused_when_busy():
        query = l2_normalise(batcher.run(searcher.model, windows)[0])
      with service.search_lock:
        (hits,) = searcher.search([query], k, per_file)
    results = []
    for h in hits:
      fid = file_id(h.file)
      results.append({"id": fid, "name": os.path.basename(h.file), "offset": h.offset,
                      "end": h.end, "score": h.score, "audio_url": f"/api/audio/{fid}",
                      **({"file": h.file} if show_paths else {})})
    return {"query": {"name": name, "id": file, "start": start, "end": end},
            "windows": int(len(query)), "results": results}

  def run_classify(upload_path, file, top_k) -> dict[str, Any]:
    loaded = service.current()
    path, name = _query_file(loaded, upload_path, file)
    limit = decode_limit(upload_path)
    try:
      res = loaded.predictor.featurize(path=path, max_seconds=limit)
    except AudioError as err:
      raise _audio_refusal(err, path, name, limit, upload_path is not None) from err
    if batcher is None:
      with service.model_lock:
        pred = loaded.predictor.predict(res, name)
    else:
      model = loaded.exact.model
      with _refused_when_busy():
        pred = Predictor(BatchedModel(batcher, model), model.meta).predict(res, name)
    out = pred.to_dict(top_k=top_k)
    out["windows"] = int(len(pred.window_start))
    return out

  async def _with_upload(audio: UploadFile | None, file: str | None, fn, *args):
    if (audio is None) == (file is None):
      raise ApiError(400, "send exactly one of the multipart fields `audio` (a file) and `id` "
                     "(an indexed file's id).")
    if audio is None:
      return await run_in_threadpool(fn, None, file, *args)
    # Only letters and digits of the client's extension reach the temporary file's name.
    suffix = re.sub(r"[^A-Za-z0-9]", "", os.path.splitext(audio.filename or "")[1])[:10]
    with tempfile.NamedTemporaryFile(suffix=f".{suffix}" if suffix else "") as tmp:
      while chunk := await audio.read(1 << 20):
        tmp.write(chunk)
      tmp.flush()
      if tmp.tell() == 0:
        raise ApiError(400, "the uploaded `audio` is empty; send an audio file.")
      return await run_in_threadpool(fn, tmp.name, None, *args)

  @api.post("/api/query")
  async def query(audio: UploadFile | None = File(None), id: str | None = Form(None),  # pylint: disable=redefined-builtin
                  start: float | None = Form(None), end: float | None = Form(None),
                  k: int = Form(10, ge=1, le=1000), per_file: bool = Form(True),
                  ann: bool | None = Form(None)):
    """Rank indexed files (or windows) by similarity to the query audio."""
    return await _with_upload(audio, id, run_query, start, end, k, per_file, ann)

  @api.post("/api/classify")
  async def classify(audio: UploadFile | None = File(None), id: str | None = Form(None),  # pylint: disable=redefined-builtin
                     top_k: int = Form(5, ge=1, le=1000)):
    """The fine-tuned model's class probabilities for a clip (what predict gives)."""
    return await _with_upload(audio, id, run_classify, top_k)

  def _entry(fid: str) -> store.Entry:
    entry = service.current().files.get(fid)
    if entry is None or not os.path.isfile(entry.path):
      raise ApiError(404, f"no indexed file has id {fid!r}; take ids from /api/query results.")
    return entry

  @api.get("/api/audio/{fid}")
  def audio_file(fid: str):
    """An indexed file (Range requests give 206 partial content)."""
    entry = _entry(fid)
    kind = mimetypes.guess_type(entry.path)[0] or "application/octet-stream"
    return FileResponse(entry.path, media_type=kind)

  @api.get("/api/waveform/{fid}")
  def waveform(fid: str, bins: int = 200):
    """Peak envelope of an indexed file in `bins` bins (normalised to its loudest)."""
    if not 8 <= bins <= 4096:
      raise ApiError(400, f"bins={bins} is outside 8-4096; pass e.g. bins=200.")
    entry = _entry(fid)
    try:
      return _envelope(entry.path, entry.mtime_ns, bins)
    except AudioError as err:   # the file changed on disk since it was indexed
      name = os.path.basename(entry.path)
      raise ApiError(409, str(err).replace(entry.path, name)) from err

  @api.get("/api/index")
  def index_info():
    """What is being served: model, frontend, counts, classes, approximate-search recall."""
    loaded = service.current()
    m = loaded.exact.manifest
    meta = loaded.exact.model.meta
    return {"index": service.path if show_paths else os.path.basename(service.path),
            "model": m.model["model"],
            "weights_sha256": m.model["weights_sha256"], "frontend": m.model["frontend"],
            "window_seconds": loaded.exact.window_seconds, "files": len(m.files),
            "windows": m.live_rows, "generation": m.generation, "classes": meta["classes"],
            "multi_label": meta["multi_label"],
            "ann_recall_at_10": (m.ann or {}).get("recall_at_10"),
            "loaded_at": loaded.loaded_at}

  @api.get("/api/health")
  def health():
    return {"status": "ok"}

  return api
