"""The search service: an HTTP API and a page over one index, model and index kept warm.

  python -m jaxaudio.search serve --index=PATH [--host=127.0.0.1] [--port=8000] [--token=T]

API (JSON; errors are {"error": one sentence} with a 4xx status):
  POST /api/query     multipart: `audio` (a file) or `id` (an indexed file), optional
                      `start`, `end` (seconds), `k`, `per_file`, `ann`
                      -> {"query", "windows", "results": [{id, name, offset, end, score,
                      audio_url}]} (and each result's `file`, its path, with --show_paths)
  POST /api/classify  multipart `audio` or `id` -> the fine-tuned model's labels, as
                      `python -m jaxaudio.predict` gives them for one file
  GET /api/audio/{id} an indexed file, with HTTP Range support (206) so players can seek
  GET /api/waveform/{id}?bins=N   peak envelope of a file, for thumbnails
  GET /api/index      model, frontend, files, windows, classes, approximate-search recall
  GET /api/health     liveness
  /api/collection, /api/labels, /api/learn, /api/rank, /api/detect: labels from search and
                      the classifier over the archive (jaxaudio/search/label_api.py)
  GET /               the page; GET /docs the OpenAPI documentation FastAPI generates

Files are named by ids (a hash of their path) and file names, never by paths: nothing outside
the index is served, and no response shows where the index or its files live unless the
server was started with --show_paths. Requests whose Host header is not the bound address
(or a loopback name, or an --allow_host name) are refused, so a web page that rebinds its
own DNS name to this address cannot read the index; no CORS header is sent unless
--allow_origin names the origins. Uploads are decoded only if their header declares a sane
rate and at most --max_upload_seconds of audio (jaxaudio.audio.io reads the header first),
so a tiny file that claims hours cannot exhaust memory.

When `search index` rewrites the index (manifest replaced atomically), the next request
loads the new one in the background of the old: until it is complete, and if it cannot be
loaded, the previous index keeps answering. Decoding runs in the server's worker threads;
their windows go to one micro-batcher (Batcher), which runs the windows of all requests
waiting at that moment as one forward pass in power-of-two chunks without padding (so a
handful of programs, compiled at start, serve every load), and the search runs one request
at a time (bounded memory). `batching=False` keeps the older path, one lock around each
request's forward pass and search, for comparison (bench/bench_serve.py measures both).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import http
import json
import logging
import math
import mimetypes
import os
import queue
import re
import socket
import tempfile
import threading
import time
from importlib import resources
from typing import Any, Sequence

import jax
import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from jaxaudio.models import outputs
from jaxaudio.inference.predictor import Predictor
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS, read_audio
from jaxaudio.runtime.errors import AudioError, JaxAudioError, SearchIndexError
from jaxaudio.search import label_api, store
from jaxaudio.models.outputs import l2_normalise
from jaxaudio.search.searcher import Searcher

log = logging.getLogger("jaxaudio")

DEFAULT_MAX_UPLOAD_MB = 50.0
DEFAULT_MAX_UPLOAD_SECONDS = 600.0
# (windows per forward pass, ms the batcher waits for more requests' windows) by backend. On
# this project's 2-core CPU aiSFX costs about the same per window at any batch size (29.5 ms
# at 1, 23-24 ms at 4-16), so large batches only make requests finish in bursts: 16 clients
# x 128 uploads gave p50 0.58x, p95 0.51x of the lock path at (64, 2 ms) and 1.01x / 1.40x at
# (4, 0) (bench/bench_serve.py); accelerators gain from large batches.
BATCH_DEFAULTS = {"cpu": (4, 0.0)}
ACCELERATOR_BATCH = (64, 2.0)
DEFAULT_MAX_BATCH, DEFAULT_BATCH_WINDOW_MS = ACCELERATOR_BATCH
DEFAULT_MAX_QUEUED = 64          # forward passes waiting; more are refused with 503
RETRY_AFTER_SECONDS = 1
RELOAD_CHECK_SECONDS = 0.5
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/page.js": ("page.js", "text/javascript; charset=utf-8"),
              "/page.css": ("page.css", "text/css; charset=utf-8")}


class ApiError(Exception):
  """A request the service refuses: HTTP status, one sentence, optional response headers."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.headers = status, headers


def file_id(path: str) -> str:
  """Stable id of an indexed file (its path's hash): ids survive reloads, paths stay private."""
  return hashlib.sha256(path.encode()).hexdigest()[:20]


def allowed_hosts(bound: str, extra: Sequence[str] = ()) -> list[str]:
  """Host header names the server answers to: the bound address; every loopback name when
  that is a loopback address; this machine's names and loopback when bound to every
  interface; and `extra` (names or comma lists; "*" for any, "*.example.org" patterns).
  IPv6 addresses are also listed in brackets, the form a Host header carries them in."""
  names = {bound}
  if bound in LOOPBACK_NAMES or bound.startswith("127."):
    names.update(LOOPBACK_NAMES)
  if bound in EVERY_INTERFACE:
    names.update(LOOPBACK_NAMES)
    names.update({socket.gethostname(), socket.getfqdn()})
  names.update(n.strip() for e in extra for n in e.split(",") if n.strip())
  names.discard("")
  return sorted(names | {f"[{n}]" for n in names if ":" in n and not n.startswith("[")})


@dataclasses.dataclass
class Loaded:
  """One consistent generation of the index: searchers, model, file table."""

  stamp: tuple
  exact: Searcher
  approx: Searcher | None
  predictor: Predictor
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
    self.model_lock = threading.Lock()    # batching=False: one forward pass + search at once
    self.search_lock = threading.Lock()   # batching: one search at once (bounded memory)

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


class Busy(Exception):
  """The batcher's queue is full: the request is refused (503) rather than queued."""


@dataclasses.dataclass
class _Job:
  model: Any                 # an exported model: mel -> {"embedding", "logits"}
  windows: np.ndarray        # float32 [N, frames, mels]; N = 0: compile (Batcher.warm)
  future: concurrent.futures.Future


_STOP = object()


def pow2_chunks(n: int, max_batch: int) -> list[tuple[int, int]]:
  """[start, end) spans covering n rows, each a power of two <= max_batch long, longest
  first: the batch sizes of the binary digits of n, so no row is padding (a pass of 17
  windows padded to 32 nearly doubles the work where, as on a CPU, a pass costs the same
  per window at any batch size) and still only log2(max_batch) + 1 programs compile."""
  spans, start = [], 0
  while start < n:
    size = min(max_batch, 1 << ((n - start).bit_length() - 1))
    spans.append((start, start + size))
    start += size
  return spans


class Batcher:
  """Forward passes of concurrent requests, batched: `run(model, windows)` queues a
  request's windows and waits; one worker thread takes the first waiting job, waits up to
  `window_ms` for more (of the same model, up to `max_batch` windows together), runs them
  as one pass of power-of-two chunks (pow2_chunks) and hands each job its rows. At most
  `max_queued` jobs wait; past that `run` raises Busy at once, so load cannot grow memory."""

  def __init__(self, max_batch: int = DEFAULT_MAX_BATCH,
               window_ms: float = DEFAULT_BATCH_WINDOW_MS,
               max_queued: int = DEFAULT_MAX_QUEUED):
    if max_batch < 1 or outputs.pow2(max_batch) != max_batch:
      raise JaxAudioError(f"--max_batch={max_batch} is not a power of two; pass e.g. 64.")
    self.max_batch, self.wait_s = max_batch, max(0.0, window_ms) / 1e3
    self._queue: queue.Queue = queue.Queue(max(1, max_queued))
    self.batches = 0                  # forward passes run (for tests and the bench)
    self._thread = threading.Thread(target=self._work, name="jaxaudio-batcher", daemon=True)
    self._thread.start()

  def run(self, model, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], logits [N, classes]) of `windows` [N, frames, mels]."""
    if not len(windows):   # nothing to run (and a job without windows means warm())
      dim = int(model.meta["embedding_dim"])
      return np.zeros((0, dim), np.float32), np.zeros((0, len(model.meta["classes"])), np.float32)
    job = _Job(model, np.asarray(windows, np.float32), concurrent.futures.Future())
    try:
      self._queue.put_nowait(job)
    except queue.Full as err:
      raise Busy() from err
    return job.future.result()

  def warm(self, model, window_shape: tuple[int, ...]) -> None:
    """Compiles `model` for every batch size the worker uses (1, 2, 4 .. max_batch), in the
    worker, ahead of the jobs queued after this call: no request waits for a compilation
    (about a second per size for aiSFX on a CPU) and memory is at its working size early."""
    self._queue.put(_Job(model, np.zeros((0,) + tuple(window_shape), np.float32),
                         concurrent.futures.Future()))

  def close(self) -> None:
    """Stops the worker once the jobs queued before this call have run."""
    self._queue.put(_STOP)
    self._thread.join()

  def _work(self) -> None:
    held = None
    while True:
      first = held if held is not None else self._queue.get()
      held = None
      if first is _STOP:
        return
      if not len(first.windows):   # warm()
        self._compile(first)
        continue
      group, n = [first], len(first.windows)
      deadline = time.monotonic() + self.wait_s
      while n < self.max_batch:
        try:
          job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        if (job is _STOP or job.model is not first.model or not len(job.windows)
            or n + len(job.windows) > self.max_batch):
          held = job
          break
        group.append(job)
        n += len(job.windows)
      self._run(group)

  def _compile(self, job: _Job) -> None:
    try:
      for size in (1 << i for i in range(self.max_batch.bit_length())):
        job.model(np.zeros((size,) + job.windows.shape[1:], np.float32))
      job.future.set_result(None)
    except Exception as err:  # pylint: disable=broad-except  # the first request meets it
      log.warning("could not compile the model ahead of requests: %s", err)
      job.future.set_exception(err)

  def _run(self, group: list[_Job]) -> None:
    model = group[0].model
    dim = int(model.meta["embedding_dim"])

    def both(x):
      out = model(x)
      return np.concatenate([out["embedding"], out["logits"]], axis=1)

    try:
      windows = np.concatenate([job.windows for job in group])
      rows = np.concatenate([both(windows[a:b]) for a, b in pow2_chunks(len(windows),
                                                                        self.max_batch)])
      self.batches += 1
    except Exception as err:  # pylint: disable=broad-except  # each waiting request gets it
      for job in group:
        job.future.set_exception(err)
      return
    start = 0
    for job in group:
      part = rows[start:start + len(job.windows)]
      job.future.set_result((part[:, :dim], part[:, dim:]))
      start += len(job.windows)


class _Batched:
  """A model callable (mel -> {"embedding", "logits"}) whose passes go through a Batcher, so
  predictor.Predictor's classification shares the batched forward passes."""

  def __init__(self, batcher: Batcher, model):
    self.batcher, self.model = batcher, model

  def __call__(self, mel: np.ndarray) -> dict[str, np.ndarray]:
    emb, logits = self.batcher.run(self.model, mel)
    return {"embedding": emb, "logits": logits}


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


class _UploadTooLarge(HTTPException):
  """Raised while the form is read; FastAPI passes its own HTTPException through as is."""

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


def _plain_error_sentence(status: int, body: bytes, headers: Headers) -> str:
  """One sentence for an error that Starlette's own middleware or responses worded in plain
  text (refused Host, bad or unsatisfiable Range)."""
  if status == 400 and body.startswith(b"Invalid host header"):
    host = headers.get("host", "")[:80]
    return (f"this server does not answer to the Host {host!r} (a guard against DNS "
            "rebinding); open it by its bound address, or start it with --allow_host=NAME.")
  if status == 416:
    return ("the Range header asks for bytes past the end of the file; ask for a range "
            "inside it (Content-Range gives the size).")
  text = body.decode("utf-8", "replace").strip().rstrip(".")[:200] or \
      http.HTTPStatus(status).phrase
  return f"the request was refused ({text}); see /docs for the API."


class _JsonErrors:
  """ASGI middleware: an error response (4xx/5xx) that is not JSON — Starlette's
  TrustedHostMiddleware and FileResponse answer some in plain text — is sent as
  {"error": one sentence} with the same status and headers, so every error is JSON."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start: dict | None = None
    body = bytearray()

    async def rewrite(message):
      nonlocal start
      if message["type"] == "http.response.start":
        kind = Headers(raw=message.get("headers", [])).get("content-type", "")
        if message["status"] >= 400 and not kind.startswith("application/json"):
          start = message
          return None
        return await send(message)
      if start is None or message["type"] != "http.response.body":
        return await send(message)
      body.extend(message.get("body", b""))
      if message.get("more_body", False):
        return None
      sentence = _plain_error_sentence(start["status"], bytes(body), Headers(scope=scope))
      payload = json.dumps({"error": sentence}).encode()
      keep = [(k, v) for k, v in start.get("headers", [])
              if k.lower() not in (b"content-type", b"content-length")]
      await send({"type": "http.response.start", "status": start["status"],
                  "headers": keep + [(b"content-type", b"application/json"),
                                     (b"content-length", str(len(payload)).encode())]})
      return await send({"type": "http.response.body", "body": payload})

    return await self.app(scope, receive, rewrite)


def create_app(index_path: str, use_ann: bool = False, ef: int = 128, token: str | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *, host: str = "127.0.0.1",
               allow_hosts: Sequence[str] = (), allow_origins: Sequence[str] = (),
               show_paths: bool = False,
               max_upload_seconds: float = DEFAULT_MAX_UPLOAD_SECONDS,
               batching: bool = True, batch_window_ms: float | None = None,
               max_batch: int | None = None,
               max_queued: int = DEFAULT_MAX_QUEUED, warm: bool = False,
               labels_at: str | None = None) -> FastAPI:
  """The ASGI app serving the index at `index_path` (loaded now; errors are raised here).

  `host`: the address the server is bound to, which with `allow_hosts` makes the Host
  allowlist (allowed_hosts); `allow_origins`: origins that get CORS headers (none by
  default); `show_paths`: responses may show server paths; `batching=False`: one lock per
  request instead of the batcher; `warm`: the batcher compiles the model's batch sizes
  before the first request (Batcher.warm); `labels_at`: the label database (default the
  index's labels.sqlite; jaxaudio/search/label_api.py serves it)."""
  service = Service(index_path, use_ann, ef)
  max_bytes = int(max_upload_mb * 1e6)
  by_backend = BATCH_DEFAULTS.get(jax.default_backend(), ACCELERATOR_BATCH)
  max_batch = by_backend[0] if max_batch is None else max_batch
  batch_window_ms = by_backend[1] if batch_window_ms is None else batch_window_ms
  batcher = Batcher(max_batch, batch_window_ms, max_queued) if batching else None
  if batcher is not None and warm:
    frontend = service.current().exact.spec_dict
    batcher.warm(service.current().exact.model,
                 (frontend["frames_per_window"], frontend["n_mels"]))

  @contextlib.asynccontextmanager
  async def lifespan(_):
    yield
    if batcher is not None:
      batcher.close()

  app = FastAPI(title="jaxaudio search", version="1", lifespan=lifespan,
                description="Query-by-example audio search with a fine-tuned model.")
  app.state.service, app.state.batcher = service, batcher
  app.state.allowed_hosts = allowed_hosts(host, allow_hosts)

  @app.exception_handler(StarletteHTTPException)
  async def _http_error(_, err: StarletteHTTPException):
    message = {413: _too_large(max_bytes),
               404: "no such page or API route; see /docs for the API.",
               405: "this route does not take that HTTP method; see /docs for the API."}.get(
                   err.status_code, str(err.detail))
    return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

  @app.exception_handler(ApiError)
  async def _api_error(_, err: ApiError):
    return JSONResponse({"error": str(err)}, status_code=err.status, headers=err.headers)

  @app.exception_handler(RequestValidationError)
  async def _invalid(_, err: RequestValidationError):
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
    msg = str(first.get("msg", "invalid")).rstrip(".").replace(". ", "; ")
    return JSONResponse({"error": f"{where or 'request'}: {msg}; see /docs for the fields."},
                        status_code=422)

  @app.exception_handler(Exception)
  async def _failed(_, err: Exception):
    # The last resort: Starlette logs the traceback to the server's log after this answer.
    return JSONResponse({"error": f"the server failed on this request ({type(err).__name__}); "
                                  "its log has the details: please report them."},
                        status_code=500)

  # Middleware: the last added is the outermost. The upload limit comes first, inside the
  # token check: BaseHTTPMiddleware runs `receive` in a task group, which would wrap the
  # limit's exception in an ExceptionGroup (a 400) were the limit outside it.
  app.add_middleware(_UploadLimit, max_bytes=max_bytes)

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

  # From the outside in: JSON errors, the Host check, CORS, the token, the upload limit.
  if allow_origins:
    app.add_middleware(CORSMiddleware, allow_origins=list(allow_origins),
                       allow_methods=["GET", "POST"], allow_headers=["Authorization"])
  app.add_middleware(TrustedHostMiddleware, allowed_hosts=app.state.allowed_hosts,
                     www_redirect=False)
  app.add_middleware(_JsonErrors)

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
        pred = Predictor(_Batched(batcher, model), model.meta).predict(res, name)
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
    try:
      return _envelope(entry.path, entry.mtime_ns, bins)
    except AudioError as err:   # the file changed on disk since it was indexed
      name = os.path.basename(entry.path)
      raise ApiError(409, str(err).replace(entry.path, name)) from err

  @app.get("/api/index")
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

  @app.get("/api/health")
  def health():
    return {"status": "ok"}

  def _page(name: str, kind: str):
    body = resources.files("jaxaudio.search").joinpath("page", name).read_bytes()
    return (HTMLResponse if name.endswith(".html") else Response)(body, media_type=kind)

  app.include_router(label_api.router(service, file_id, ApiError, labels_at, show_paths))
  for route, (name, kind) in PAGE_FILES.items():
    app.add_api_route(route, functools.partial(_page, name, kind), methods=["GET"],
                      include_in_schema=False)
  return app
