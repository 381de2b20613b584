"""The search service: an HTTP API and a page over one index, model and index kept warm.

  python -m jaxaudio.search serve --index=PATH [--host=127.0.0.1] [--port=8000] [--token=T]

API (JSON; errors are {"error": one sentence} with a 4xx status):
  POST /api/query     multipart: `audio` (a file) or `id` (an indexed file), optional
                      `start`, `end` (seconds), `k`, `per_file`, `ann`
                      -> {"query", "windows", "results": [{id, file, name, offset, end,
                      score, audio_url}]}
  POST /api/classify  multipart `audio` or `id` -> the fine-tuned model's labels, as
                      `python -m jaxaudio.predict` gives them for one file
  GET /api/audio/{id} an indexed file, with HTTP Range support (206) so players can seek
  GET /api/waveform/{id}?bins=N   peak envelope of a file, for thumbnails
  GET /api/index      model, frontend, files, windows, classes, approximate-search recall
  GET /api/health     liveness
  GET /               the page; GET /docs the OpenAPI documentation FastAPI generates

Files are named by ids (a hash of their path), never by paths: nothing outside the index is
served. When `search index` rewrites the index (manifest replaced atomically), the next
request loads the new one in the background of the old: until it is complete, and if it
cannot be loaded, the previous index keeps answering. Decoding runs in the server's worker
threads; the model and the search run one at a time under a lock (bounded memory, no
assumption about the thread safety of the compiled programs).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
import mimetypes
import os
import tempfile
import threading
import time
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxaudio import inference
from jaxaudio.audio.io import read_audio
from jaxaudio.errors import AudioError, JaxAudioError, SearchIndexError
from jaxaudio.search import store
from jaxaudio.search.searcher import Searcher

log = logging.getLogger("jaxaudio")

DEFAULT_MAX_UPLOAD_MB = 50.0
RELOAD_CHECK_SECONDS = 0.5
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/page.js": ("page.js", "text/javascript; charset=utf-8"),
              "/page.css": ("page.css", "text/css; charset=utf-8")}


class ApiError(Exception):
  """A request the service refuses: HTTP status and one sentence."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def file_id(path: str) -> str:
  """Stable id of an indexed file (its path's hash): ids survive reloads, paths stay private."""
  return hashlib.sha256(path.encode()).hexdigest()[:20]


@dataclasses.dataclass
class Loaded:
  """One consistent generation of the index: searchers, model, file table."""

  stamp: tuple
  exact: Searcher
  approx: Searcher | None
  predictor: inference.Predictor
  files: dict[str, store.Entry]      # id -> entry
  loaded_at: float


def _stamp(path: str) -> tuple:
  st = os.stat(os.path.join(path, store.MANIFEST))
  return (st.st_ino, st.st_mtime_ns, st.st_size)


def _load(path: str, ef: int) -> Loaded:
  stamp = _stamp(path)
  exact = Searcher(path)
  approx = Searcher(path, use_ann=True, ef=ef, share=exact) if exact.manifest.ann else None
  files = {file_id(e.path): e for e in exact.rows.files}
  return Loaded(stamp, exact, approx, exact.model.predictor(), files, time.time())


class Service:
  """The index behind the API: loaded once, reloaded when its manifest changes."""

  def __init__(self, index_path: str, use_ann: bool = False, ef: int = 128):
    self.path = os.path.abspath(index_path)
    self.default_ann, self.ef = use_ann, ef
    self._current = _load(self.path, ef)
    if use_ann and self._current.approx is None:
      raise SearchIndexError(f"{self.path} has no approximate index; build it with python -m "
                             "jaxaudio.search index --ann, or serve without --ann.")
    self._checked = time.monotonic()
    self._reload_lock = threading.Lock()
    self.model_lock = threading.Lock()

  def current(self) -> Loaded:
    """The newest complete index: reloads when the manifest on disk has changed."""
    now = time.monotonic()
    if now - self._checked < RELOAD_CHECK_SECONDS:
      return self._current
    self._checked = now
    try:
      stamp = _stamp(self.path)
    except OSError:
      return self._current
    if stamp == self._current.stamp or not self._reload_lock.acquire(blocking=False):
      return self._current
    try:
      fresh = _load(self.path, self.ef)
      self._current = fresh
      log.warning("reloaded %s: %d files", self.path, len(fresh.files))
    except (JaxAudioError, OSError, ValueError) as err:  # a rewrite in progress: try later
      log.warning("keeping the loaded index: %s", err)
    finally:
      self._reload_lock.release()
    return self._current


def _query_file(loaded: Loaded, upload_path: str | None, file: str | None) -> tuple[str, str]:
  """(path to decode, name to show) of an uploaded file or an indexed one."""
  if upload_path is not None:
    return upload_path, "upload"
  entry = loaded.files.get(file or "")
  if entry is None:
    raise ApiError(404, f"no indexed file has id {file!r}; take ids from /api/query results.")
  return entry.path, os.path.basename(entry.path)


def _span(start: float | None, end: float | None) -> tuple[float | None, float | None]:
  if start is not None and start < 0 or end is not None and (end <= (start or 0.0)):
    raise ApiError(400, f"start={start} end={end} is not a span; pass 0 <= start < end "
                   "(seconds).")
  return start, end


@functools.lru_cache(maxsize=256)
def _envelope(path: str, mtime_ns: int, bins: int) -> dict[str, Any]:
  del mtime_ns  # part of the cache key: a changed file gets a new envelope
  x, rate = read_audio(path)
  edges = np.linspace(0, len(x), bins + 1).astype(int)
  peaks = [float(np.max(np.abs(x[a:b]))) if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])]
  top = max(peaks) or 1.0
  return {"seconds": len(x) / rate, "peaks": [round(p / top, 4) for p in peaks]}


class _UploadTooLarge(StarletteHTTPException):
  def __init__(self):
    super().__init__(status_code=413)


class _UploadLimit:
  """ASGI middleware: a request body over `max_bytes` is refused with 413 — at once when its
  Content-Length says so, else as soon as the bytes read pass the limit (an HTTPException
  raised while the form is parsed, which the app's handler words). Starlette's own body
  limit answers in plain text, which is why this one exists."""

  def __init__(self, app, max_bytes: int):
    self.app, self.max_bytes = app, max_bytes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http" or scope["method"] != "POST":
      return await self.app(scope, receive, send)
    length = dict(scope["headers"]).get(b"content-length", b"")
    if length.isdigit() and int(length) > self.max_bytes:
      return await JSONResponse({"error": _too_large(self.max_bytes)}, status_code=413)(
          scope, receive, send)
    seen = 0

    async def counted():
      nonlocal seen
      message = await receive()
      seen += len(message.get("body", b""))
      if seen > self.max_bytes:
        raise _UploadTooLarge()
      return message

    return await self.app(scope, counted, send)


def _too_large(max_bytes: int) -> str:
  return (f"the upload is larger than the server's limit of {max_bytes / 1e6:.1f} MB; send a "
          "shorter clip or start the server with a larger --max_upload_mb.")


def create_app(index_path: str, use_ann: bool = False, ef: int = 128, token: str | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> FastAPI:
  """The ASGI app serving the index at `index_path` (loaded now; errors are raised here)."""
  service = Service(index_path, use_ann, ef)
  max_bytes = int(max_upload_mb * 1e6)
  app = FastAPI(title="jaxaudio search", version="1",
                description="Query-by-example audio search with a fine-tuned model.")
  app.state.service = service
  app.add_middleware(_UploadLimit, max_bytes=max_bytes)

  @app.exception_handler(StarletteHTTPException)
  async def _http_error(_, err: StarletteHTTPException):
    message = {413: _too_large(max_bytes),
               404: "no such page or API route; see /docs for the API."}.get(
                   err.status_code, str(err.detail))
    return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

  @app.exception_handler(ApiError)
  async def _api_error(_, err: ApiError):
    return JSONResponse({"error": str(err)}, status_code=err.status)

  @app.exception_handler(RequestValidationError)
  async def _invalid(_, err: RequestValidationError):
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
    return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid')}; see "
                                  "/docs for the fields."}, status_code=422)

  @app.middleware("http")
  async def _token(request: Request, call_next):
    if token and request.url.path.startswith("/api/"):
      given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
          or request.query_params.get("token", "")
      if not hmac.compare_digest(given.encode(), token.encode()):
        return JSONResponse({"error": "this server needs its token: send the header "
                                      "`Authorization: Bearer TOKEN` or ?token=TOKEN."},
                            status_code=401)
    return await call_next(request)

  def run_query(upload_path, file, start, end, k, per_file, ann) -> dict[str, Any]:
    loaded = service.current()
    searcher = loaded.exact
    if ann if ann is not None else service.default_ann:
      if loaded.approx is None:
        raise ApiError(400, "this index has no approximate search; build it with python -m "
                       "jaxaudio.search index --ann, or query with ann=false.")
      searcher = loaded.approx
    path, name = _query_file(loaded, upload_path, file)
    try:
      windows = searcher.query_windows(path, *_span(start, end))
    except AudioError as err:
      raise ApiError(400, str(err).replace(path, name)) from err
    with service.model_lock:
      query = searcher.embed_windows(windows)
      (hits,) = searcher.search([query], k, per_file)
    results = []
    for h in hits:
      fid = file_id(h.file)
      results.append({"id": fid, "file": h.file, "name": os.path.basename(h.file),
                      "offset": h.offset, "end": h.end, "score": h.score,
                      "audio_url": f"/api/audio/{fid}"})
    return {"query": {"name": name, "id": file, "start": start, "end": end},
            "windows": int(len(query)), "results": results}

  def run_classify(upload_path, file, top_k) -> dict[str, Any]:
    loaded = service.current()
    path, name = _query_file(loaded, upload_path, file)
    try:
      res = loaded.predictor.featurize(path=path)
    except AudioError as err:
      raise ApiError(400, str(err).replace(path, name)) from err
    with service.model_lock:
      pred = loaded.predictor.predict(res, name)
    out = pred.to_dict(top_k=top_k)
    out["windows"] = int(len(pred.window_start))
    return out

  async def _with_upload(audio: UploadFile | None, file: str | None, fn, *args):
    if (audio is None) == (file is None):
      raise ApiError(400, "send exactly one of the multipart fields `audio` (a file) and `id` "
                     "(an indexed file's id).")
    if audio is None:
      return await run_in_threadpool(fn, None, file, *args)
    suffix = os.path.splitext(audio.filename or "")[1][:10]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
      while chunk := await audio.read(1 << 20):
        tmp.write(chunk)
      tmp.flush()
      if tmp.tell() == 0:
        raise ApiError(400, "the uploaded `audio` is empty; send an audio file.")
      return await run_in_threadpool(fn, tmp.name, None, *args)

  @app.post("/api/query")
  async def query(audio: UploadFile | None = File(None), id: str | None = Form(None),  # pylint: disable=redefined-builtin
                  start: float | None = Form(None), end: float | None = Form(None),
                  k: int = Form(10, ge=1, le=1000), per_file: bool = Form(True),
                  ann: bool | None = Form(None)):
    """Rank indexed files (or windows) by similarity to the query audio."""
    return await _with_upload(audio, id, run_query, start, end, k, per_file, ann)

  @app.post("/api/classify")
  async def classify(audio: UploadFile | None = File(None), id: str | None = Form(None),  # pylint: disable=redefined-builtin
                     top_k: int = Form(5, ge=1, le=1000)):
    """The fine-tuned model's class probabilities for a clip (what predict gives)."""
    return await _with_upload(audio, id, run_classify, top_k)

  def _entry(fid: str) -> store.Entry:
    entry = service.current().files.get(fid)
    if entry is None or not os.path.isfile(entry.path):
      raise ApiError(404, f"no indexed file has id {fid!r}; take ids from /api/query results.")
    return entry

  @app.get("/api/audio/{fid}")
  def audio_file(fid: str):
    """An indexed file (Range requests give 206 partial content)."""
    entry = _entry(fid)
    kind = mimetypes.guess_type(entry.path)[0] or "application/octet-stream"
    return FileResponse(entry.path, media_type=kind)

  @app.get("/api/waveform/{fid}")
  def waveform(fid: str, bins: int = 200):
    """Peak envelope of an indexed file in `bins` bins (normalised to its loudest)."""
    if not 8 <= bins <= 4096:
      raise ApiError(400, f"bins={bins} is outside 8-4096; pass e.g. bins=200.")
    entry = _entry(fid)
    return _envelope(entry.path, entry.mtime_ns, bins)

  @app.get("/api/index")
  def index_info():
    """What is being served: model, frontend, counts, classes, approximate-search recall."""
    loaded = service.current()
    m = loaded.exact.manifest
    meta = loaded.exact.model.meta
    return {"index": service.path, "model": m.model["model"],
            "weights_sha256": m.model["weights_sha256"], "frontend": m.model["frontend"],
            "window_seconds": loaded.exact.window_seconds, "files": len(m.files),
            "windows": m.live_rows, "generation": m.generation, "classes": meta["classes"],
            "multi_label": meta["multi_label"],
            "ann_recall_at_10": (m.ann or {}).get("recall_at_10"),
            "loaded_at": loaded.loaded_at}

  @app.get("/api/health")
  def health():
    return {"status": "ok"}

  def _page(name: str, kind: str):
    body = resources.files("jaxaudio.search").joinpath("page", name).read_bytes()
    return (HTMLResponse if name.endswith(".html") else Response)(body, media_type=kind)

  for route, (name, kind) in PAGE_FILES.items():
    app.add_api_route(route, functools.partial(_page, name, kind), methods=["GET"],
                      include_in_schema=False)
  return app
