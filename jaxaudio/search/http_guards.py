"""What stands between the network and the search service: one-sentence JSON errors for every
refusal, the Host allowlist (DNS rebinding), CORS only for named origins, the bearer token,
and the upload size limit. `install` puts them on an app in the one order that works."""

from __future__ import annotations

import hmac
import http
import json
import socket
from typing import Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")


class ApiError(Exception):
  """A request the service refuses: HTTP status, one sentence, optional response headers."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.headers = status, headers


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


class UploadTooLarge(HTTPException):
  """Raised while the form is read; FastAPI passes its own HTTPException through as is."""

  def __init__(self):
    super().__init__(status_code=413)


class UploadLimit:
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
      return await JSONResponse({"error": too_large(self.max_bytes)}, status_code=413)(
          scope, receive, send)
    seen = 0

    async def counted():
      nonlocal seen
      message = await receive()
      seen += len(message.get("body", b""))
      if seen > self.max_bytes:
        raise UploadTooLarge()
      return message

    return await self.app(scope, counted, send)


class TokenCheck:
  """ASGI middleware: with a token, every /api/ request must carry it (`Authorization: Bearer
  TOKEN` or ?token=TOKEN, compared in constant time) or gets 401 JSON. Plain ASGI rather than
  Starlette's BaseHTTPMiddleware: that one runs each request in a task group whose cancel
  scope anyio keeps re-delivering while a route waits in a worker thread, which cost the
  server's event loop about a tenth of its CPU under 16 concurrent uploads."""

  def __init__(self, app, token: str | None):
    self.app, self.token = app, token

  async def __call__(self, scope, receive, send):
    if (not self.token or scope["type"] != "http"
        or not scope.get("path", "").startswith("/api/")):
      return await self.app(scope, receive, send)
    request = Request(scope)
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
        or request.query_params.get("token", "")
    if not hmac.compare_digest(given.encode(), self.token.encode()):
      return await JSONResponse(
          {"error": "this server needs its token: send the header `Authorization: Bearer "
                    "TOKEN` or ?token=TOKEN."}, status_code=401)(scope, receive, send)
    return await self.app(scope, receive, send)


def too_large(max_bytes: int) -> str:
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


class JsonErrors:
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


def install(app: FastAPI, *, max_bytes: int, allowed: Sequence[str], token: str | None = None,
            allow_origins: Sequence[str] = ()) -> None:
  """Error handlers and middleware: from the outside in, JSON errors, the Host check, CORS
  (only when origins are named), the token (on /api/), the upload limit."""

  @app.exception_handler(StarletteHTTPException)
  async def _http_error(_, err: StarletteHTTPException):
    message = {413: too_large(max_bytes),
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

  # Middleware: the last added is the outermost. Every one is plain ASGI, so an exception
  # the upload limit raises while the form is read reaches the app's handler as it is.
  app.add_middleware(UploadLimit, max_bytes=max_bytes)
  app.add_middleware(TokenCheck, token=token)
  if allow_origins:
    app.add_middleware(CORSMiddleware, allow_origins=list(allow_origins),
                       allow_methods=["GET", "POST"], allow_headers=["Authorization"])
  app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed), www_redirect=False)
  app.add_middleware(JsonErrors)
