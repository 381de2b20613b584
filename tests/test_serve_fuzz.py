"""Schemathesis against `search serve`'s own OpenAPI schema, on a real uvicorn process on
loopback: generated requests to every operation (valid ones and ones that break the schema,
uploads of random bytes included) get no 5xx, every error is {"error": one sentence} JSON,
and the server logs no traceback (the `server` fixture checks its output when it stops).
Bounded: EXAMPLES per operation, no per-example deadline, about half a minute in all."""

import httpx2 as httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis

from test_serve import served, server  # noqa: F401  pylint: disable=unused-import

EXAMPLES = 60   # per operation and mode; six operations, valid and schema-breaking requests


NO_INPUTS = ("/api/health", "/api/index")
NO_INPUTS_LABELS = tuple(f"GET {path}" for path in NO_INPUTS)   # one request is all there is


def _check(case, base_url):
  response = case.call(base_url=base_url, timeout=60)
  assert response.status_code < 500, (case.as_curl_command(), response.text)
  if response.status_code >= 400:
    kind = response.headers.get("content-type", [""])[0]   # schemathesis: lists of values
    assert kind.startswith("application/json"), (
        case.as_curl_command(), response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_input_gets_a_5xx_and_every_error_is_json(server, mode):  # pylint: disable=redefined-outer-name
  """Each operation of the schema the server publishes, EXAMPLES generated requests each.
  (The schema is loaded from the running server, so the operations are looped over here
  rather than parametrized at collection, before the server exists.)"""
  schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
  operations = [result.ok() for result in schema.get_all_operations()]
  assert {op.path for op in operations} >= {"/api/query", "/api/classify", "/api/index",
                                            "/api/audio/{fid}", "/api/waveform/{fid}"}
  tried, unbreakable = {}, []
  for op in operations:
    if mode == schemathesis.GenerationMode.NEGATIVE and op.path in NO_INPUTS:
      continue   # nothing to break: no parameter, no body

    @hypothesis.given(case=op.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         database=None, suppress_health_check=list(hypothesis.HealthCheck))
    def fuzz(case):
      tried[case.operation.label] = tried.get(case.operation.label, 0) + 1
      _check(case, server)

    try:
      fuzz()
    except hypothesis.errors.Unsatisfiable:
      unbreakable.append(op.label)   # every input the schema can express is valid
  print(f"{mode}: requests tried per operation {tried}; none generated for {unbreakable}")
  want = {"POST /api/query", "POST /api/classify", "GET /api/waveform/{fid}"}
  if mode == schemathesis.GenerationMode.POSITIVE:
    want |= {"GET /api/index", "GET /api/health", "GET /api/audio/{fid}"}
  assert set(tried) >= want and all(tried[label] >= EXAMPLES // 2 for label in want
                                    if label not in NO_INPUTS_LABELS), tried


def test_the_real_server_refuses_a_rebound_host_in_json(server):  # pylint: disable=redefined-outer-name
  """DNS rebinding through uvicorn itself: a page's own name in the Host header is refused
  with one JSON sentence; the loopback names are answered."""
  port = server.rsplit(":", 1)[1]
  r = httpx.get(f"{server}/api/index", headers={"Host": f"attacker.example:{port}"}, timeout=30)
  assert r.status_code == 400 and "--allow_host" in r.json()["error"], r.text
  assert "access-control-allow-origin" not in r.headers
  for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
    assert httpx.get(f"{server}/api/health", headers={"Host": host}, timeout=30).status_code == 200
