"""The search server: an HTTP API and a page over one index, model and index kept warm.

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

Where each part lives: service.py (the index kept loaded), batching.py (the micro-batcher),
http_guards.py (errors, Host, CORS, token, upload limit), search_api.py and label_api.py (the
routes); this module wires them into one app.
"""

from __future__ import annotations

import contextlib
import functools
from importlib import resources
from typing import Sequence

import jax
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from jaxaudio.search import label_api, search_api
from jaxaudio.search.batching import ACCELERATOR_BATCH, BATCH_DEFAULTS, DEFAULT_MAX_QUEUED, Batcher
from jaxaudio.search.http_guards import allowed_hosts, install
from jaxaudio.search.service import Service

DEFAULT_MAX_UPLOAD_MB = 50.0
DEFAULT_MAX_UPLOAD_SECONDS = 600.0
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/page.js": ("page.js", "text/javascript; charset=utf-8"),
              "/page.css": ("page.css", "text/css; charset=utf-8")}


def _page(name: str, kind: str):
  body = resources.files("jaxaudio.search").joinpath("page", name).read_bytes()
  return (HTMLResponse if name.endswith(".html") else Response)(body, media_type=kind)


def create_app(index_path: str, use_ann: bool = False, ef: int = 128, token: str | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *, host: str = "127.0.0.1",
               allow_hosts: Sequence[str] = (), allow_origins: Sequence[str] = (),
               show_paths: bool = False,
               max_upload_seconds: float = DEFAULT_MAX_UPLOAD_SECONDS,
               batching: bool = True, batch_window_ms: float | None = None,
               max_batch: int | None = None,
               max_queued: int = DEFAULT_MAX_QUEUED, warm: bool = False,
               labels_at: str | None = None, nprobe: int | None = None) -> FastAPI:
  """The ASGI app serving the index at `index_path` (loaded now; errors are raised here).

  `host`: the address the server is bound to, which with `allow_hosts` makes the Host
  allowlist (allowed_hosts); `allow_origins`: origins that get CORS headers (none by
  default); `show_paths`: responses may show server paths; `batching=False`: one lock per
  request instead of the batcher; `warm`: the batcher compiles the model's batch sizes
  before the first request (Batcher.warm); `labels_at`: the label database (default the
  index's labels.sqlite; jaxaudio/search/label_api.py serves it); `nprobe`: IVF-PQ lists scanned
  per query (default: the manifest's, the smallest that reached recall@10 0.95 at build)."""
  service = Service(index_path, use_ann, ef, nprobe)
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
  install(app, max_bytes=max_bytes, allowed=app.state.allowed_hosts, token=token,
          allow_origins=allow_origins)
  app.include_router(search_api.router(service, batcher, show_paths=show_paths,
                                       max_upload_seconds=max_upload_seconds))
  app.include_router(label_api.router(service, labels_at, show_paths))
  for route, (name, kind) in PAGE_FILES.items():
    app.add_api_route(route, functools.partial(_page, name, kind), methods=["GET"],
                      include_in_schema=False)
  return app
