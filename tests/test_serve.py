"""`search serve`: the JSON API through FastAPI's test client, then a real uvicorn process on
loopback driven by concurrent clients and by headless Chromium (the page test)."""

import concurrent.futures
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import httpx2 as httpx
import numpy as np
import psutil
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from datafixtures import SR, tone, write_class_folder

HOP_SECONDS = 50 * 1024 / SR   # aiSFX window hop at the training hop (0.5 window)


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
  """(index path, audio folder, export dir): tone files, a long two-part file, a file whose
  name needs quoting."""
  from jaxaudio.inference import exported
  from jaxaudio.exports import stablehlo
  from jaxaudio.search import indexer
  root = tmp_path_factory.mktemp("served")
  audio = root / "audio"
  write_class_folder(str(audio), per_class=3, seconds=1.0)
  sf.write(str(audio / "long_sweep.wav"),
           np.concatenate([tone(300, 3.5, seed=1), tone(1500, 3.5, seed=2)]), SR)
  sf.write(str(audio / "a b&c é.wav"), tone(900, 2.0, seed=5), SR)
  export_dir = stablehlo.for_run(trained[0])
  index = str(root / "index")
  indexer.update(index, str(audio), export_dir, workers=1, progress=False)
  return index, str(audio), export_dir


def _client(index, **kwargs):
  """A test client of the app, addressed as a browser on this machine addresses it."""
  from jaxaudio.search.app import create_app
  return TestClient(create_app(index, **kwargs), base_url="http://127.0.0.1:8000")


def _upload(path):
  return {"audio": (os.path.basename(path), open(path, "rb"), "audio/wav")}


def _one_sentence(r, status):
  assert r.status_code == status, (r.status_code, r.text)
  body = r.json()
  assert set(body) == {"error"} and body["error"].count(". ") == 0, body
  return body["error"]


def test_query_classify_index_and_health(served):
  from jaxaudio.inference import exported
  from jaxaudio.exports import stablehlo
  from jaxaudio.search.service import file_id
  index, audio, export_dir = served
  client = _client(index)
  assert client.get("/api/health").json() == {"status": "ok"}
  info = client.get("/api/index").json()
  assert info["files"] == 11 and info["model"] == "aisfx" and info["classes"] == ["high", "low", "mid"]
  assert info["windows"] > 11 and info["ann_recall_at_10"] is None
  path = os.path.join(audio, "mid", "mid_1.wav")
  r = client.post("/api/query", files=_upload(path), data={"k": "5"})
  assert r.status_code == 200, r.text
  body = r.json()
  first = body["results"][0]
  assert first["id"] == file_id(path) and first["score"] == pytest.approx(1.0, abs=1e-5)
  assert first["name"] == "mid_1.wav" and first["audio_url"] == f"/api/audio/{first['id']}"
  assert len(body["results"]) == 5 and len({h["id"] for h in body["results"]}) == 5
  # The same query by id, without an upload, ranks the same.
  by_id = client.post("/api/query", data={"id": first["id"], "k": "5"}).json()
  assert [h["id"] for h in by_id["results"]] == [h["id"] for h in body["results"]]
  # A part of the long file, per window: its own window at that offset comes first.
  long = os.path.join(audio, "long_sweep.wav")
  r = client.post("/api/query", files=_upload(long),
                  data={"start": str(3 * HOP_SECONDS), "end": str(5 * HOP_SECONDS),
                        "per_file": "false", "k": "3"})
  hit = r.json()["results"][0]
  assert hit["id"] == file_id(long) and hit["offset"] == pytest.approx(3 * HOP_SECONDS, abs=1e-3)
  # classify gives what predict gives for the file.
  c = client.post("/api/classify", files=_upload(path), data={"top_k": "2"}).json()
  want = exported.load(export_dir).predict(path)
  assert c["label"] == want.label and c["file"] == "upload"
  np.testing.assert_allclose([c["probabilities"][k] for k in want.classes], want.probabilities,
                             atol=1e-6)
  assert [t["label"] for t in c["top_k"]] == [k for k, _ in want.top_k(2)]


def test_audio_is_served_by_id_with_ranges_and_nothing_else_is(served):
  from jaxaudio.search.service import file_id
  index, audio, _ = served
  client = _client(index)
  path = os.path.join(audio, "a b&c é.wav")
  data = open(path, "rb").read()
  url = f"/api/audio/{file_id(path)}"
  full = client.get(url)
  assert full.status_code == 200 and full.content == data
  assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "audio/x-wav"
  part = client.get(url, headers={"Range": "bytes=100-1099"})
  assert part.status_code == 206 and part.content == data[100:1100]
  assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
  tail = client.get(url, headers={"Range": "bytes=-10"})
  assert tail.status_code == 206 and tail.content == data[-10:]
  assert "Range" in _one_sentence(client.get(url, headers={"Range": f"bytes={len(data) + 5}-"}),
                                  416)
  env = client.get(f"/api/waveform/{file_id(path)}?bins=50").json()
  assert len(env["peaks"]) == 50 and max(env["peaks"]) == 1.0
  assert env["seconds"] == pytest.approx(2.0, abs=1e-3)
  secret = open("/etc/passwd", "rb").read()
  for attempt in ("../../../../etc/passwd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
                  "%2e%2e/%2e%2e/%2e%2e/etc/passwd", "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
                  "%2Fetc%2Fpasswd", "..%5C..%5Cetc%5Cpasswd", "%c0%ae%c0%ae/etc/passwd",
                  "etc%00passwd", file_id("/etc/passwd"), file_id(path).upper(),
                  file_id(path) + "%2F..%2F..%2Fetc%2Fpasswd"):
    for route in ("/api/audio/", "/api/waveform/"):
      r = client.get(route + attempt)
      assert r.status_code == 404, (attempt, r.status_code)
      assert secret[:20] not in r.content and "error" in r.json()


def test_bad_requests_get_one_sentence(served, tmp_path):
  index, audio, _ = served
  client = _client(index, max_upload_mb=0.5)
  text = tmp_path / "notes.wav"
  text.write_text("this is not audio at all " * 20)
  assert "notes.wav" not in _one_sentence(client.post("/api/query", files=_upload(str(text))), 400)
  empty = tmp_path / "empty.wav"
  empty.write_bytes(b"")
  assert "empty" in _one_sentence(client.post("/api/query", files=_upload(str(empty))), 400)
  assert "exactly one" in _one_sentence(client.post("/api/query", data={"k": "3"}), 400)
  path = os.path.join(audio, "low", "low_0.wav")
  assert "id" in _one_sentence(client.post("/api/classify", data={"id": "nope"}), 404)
  assert "span" in _one_sentence(client.post("/api/query", files=_upload(path),
                                             data={"start": "0.8", "end": "0.2"}), 400)
  assert "k" in _one_sentence(client.post("/api/query", files=_upload(path),
                                          data={"k": "0"}), 422)
  assert "approximate" in _one_sentence(client.post("/api/query", files=_upload(path),
                                                    data={"ann": "true"}), 400)
  big = os.path.join(audio, "long_sweep.wav")   # 0.62 MB > 0.5 MB
  assert "--max_upload_mb" in _one_sentence(client.post("/api/query", files=_upload(big)), 413)

  def chunked():   # no Content-Length: the limit applies to the bytes as they arrive
    yield b"--x\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n\r\n"
    for _ in range(20):
      yield b"\0" * 50_000
  r = client.post("/api/query", content=chunked(),
                  headers={"Content-Type": "multipart/form-data; boundary=x"})
  assert "--max_upload_mb" in _one_sentence(r, 413)
  assert "/docs" in _one_sentence(client.get("/api/nothing"), 404)
  # A refused request loses nothing: the next one is answered.
  assert client.post("/api/query", files=_upload(path)).status_code == 200


def test_token_guards_every_api_call_but_not_the_page(served):
  from jaxaudio.search.service import file_id
  index, audio, _ = served
  client = _client(index, token="s3cret")
  path = os.path.join(audio, "low", "low_0.wav")
  assert "token" in _one_sentence(client.get("/api/index"), 401)
  assert "token" in _one_sentence(client.post("/api/query", files=_upload(path)), 401)
  _one_sentence(client.get("/api/index", headers={"Authorization": "Bearer wrong"}), 401)
  assert client.get("/api/index", headers={"Authorization": "Bearer s3cret"}).status_code == 200
  assert client.get(f"/api/audio/{file_id(path)}?token=s3cret").status_code == 200
  page = client.get("/")
  assert page.status_code == 200 and "jaxaudio search" in page.text
  assert client.get("/page.js").status_code == 200 and client.get("/docs").status_code == 200


def _wav_declaring(path, rate, frames=32000):
  """A 16-bit WAV of `frames` silent samples whose header declares `rate` Hz (the file is
  what any 16 kHz recording of that size is; only the header's two rate fields change)."""
  sf.write(str(path), np.zeros(frames, np.int16), SR, subtype="PCM_16")
  data = bytearray(open(path, "rb").read())
  data[24:32] = struct.pack("<II", rate, rate * 2)   # sample rate, byte rate (mono 16 bit)
  open(path, "wb").write(bytes(data))
  return str(path)


def test_hostile_uploads_get_json_4xx_and_memory_stays_flat(served, tmp_path):
  """The issue's table: a 64 KB WAV declaring 1 Hz (8.9 hours once resampled) sent to
  classify, a 0 Hz header sent to query, end=inf / 1e308 / nan, and an upload longer than
  --max_upload_seconds: each a one-sentence 4xx, the server's memory unchanged."""
  index, audio, _ = served
  client = _client(index, max_upload_seconds=5.0)
  path = os.path.join(audio, "low", "low_0.wav")
  one_hz = _wav_declaring(tmp_path / "one_hz.wav", 1)
  assert os.path.getsize(one_hz) < 65 * 1024
  client.post("/api/classify", files=_upload(path))          # warm: programs compiled
  rss = psutil.Process().memory_info().rss
  for route in ("/api/classify", "/api/query"):
    assert "Hz" in _one_sentence(client.post(route, files=_upload(one_hz)), 400)
  assert psutil.Process().memory_info().rss - rss < 50e6      # 8.9 h at 16 kHz would be 2 GB
  zero_hz = _wav_declaring(tmp_path / "zero_hz.wav", 0)
  for route in ("/api/query", "/api/classify"):
    assert "zero_hz" not in _one_sentence(client.post(route, files=_upload(zero_hz)), 400)
  for span in ({"end": "inf"}, {"end": "1e308"}, {"start": "nan"}, {"start": "-inf"},
               {"start": "0", "end": "-1"}):
    _one_sentence(client.post("/api/query", files=_upload(path), data=span), 400)
  long = os.path.join(audio, "long_sweep.wav")   # 7 s > 5 s
  for route in ("/api/query", "/api/classify"):
    assert "--max_upload_seconds" in _one_sentence(client.post(route, files=_upload(long)), 413)
  # An indexed file is not an upload: the same file by id is answered.
  from jaxaudio.search.service import file_id
  assert client.post("/api/query", data={"id": file_id(long)}).status_code == 200
  # A filename the temporary file could not carry (a NUL, a slash) is only a name.
  r = client.post("/api/query", files={"audio": ("x.w\0a/v", open(path, "rb"), "audio/wav")})
  assert r.status_code == 200, r.text


def test_only_names_and_ids_unless_show_paths(served):
  """No response carries a server path (the index's, an audio file's, an upload's temporary
  file) unless the server is started with --show_paths."""
  from jaxaudio.search.service import file_id
  index, audio, _ = served
  roots = (os.path.dirname(index), audio, tempfile.gettempdir())
  path = os.path.join(audio, "mid", "mid_1.wav")
  client = _client(index)
  answers = [client.get("/api/index"), client.post("/api/query", files=_upload(path)),
             client.post("/api/query", data={"id": file_id(path), "per_file": "false"}),
             client.post("/api/classify", files=_upload(path)),
             client.post("/api/classify", data={"id": file_id(path)}),
             client.post("/api/query", data={"id": file_id(path), "start": "50"})]
  for r in answers:
    assert r.status_code in (200, 400), r.text
    assert not any(root in r.text for root in roots), r.text
  assert answers[0].json()["index"] == "index"
  assert "file" not in answers[1].json()["results"][0]
  shown = _client(index, show_paths=True)
  assert shown.get("/api/index").json()["index"] == index
  assert shown.post("/api/query", files=_upload(path)).json()["results"][0]["file"] == path


def test_hosts_outside_the_allowlist_are_refused_and_cors_is_closed(served):
  """A DNS-rebinding page reaches the server under its own name in the Host header: only the
  bound address, loopback names (when bound to loopback) and --allow_host names are
  answered; and no CORS header is sent unless --allow_origin names the origin."""
  index = served[0]
  client = _client(index)
  for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
    assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
  for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
    r = client.get("/api/index", headers={"Host": host})
    assert "--allow_host" in _one_sentence(r, 400), host
  _one_sentence(client.get("/", headers={"Host": "evil.example"}), 400)
  allowed = _client(index, allow_hosts=["search.lab.example, other.example"],
                    allow_origins=["https://tools.example"])
  assert allowed.get("/api/health", headers={"Host": "search.lab.example"}).status_code == 200
  assert allowed.get("/api/health", headers={"Host": "other.example"}).status_code == 200
  assert allowed.get("/api/health", headers={"Host": "evil.example"}).status_code == 400
  asked = {"Origin": "https://evil.example"}
  assert not any(h.startswith("access-control")
                 for h in client.get("/api/index", headers=asked).headers)
  r = allowed.get("/api/index", headers={"Origin": "https://tools.example"})
  assert r.headers["access-control-allow-origin"] == "https://tools.example"
  assert "access-control-allow-origin" not in allowed.get("/api/index", headers=asked).headers
  wide = _client(index, host="0.0.0.0")
  assert wide.get("/api/health", headers={"Host": socket.gethostname()}).status_code == 200
  assert wide.get("/api/health", headers={"Host": "evil.example"}).status_code == 400


def test_batched_and_lock_paths_answer_alike(served):
  """The micro-batcher gives each request the rows of its own windows: the same ranking and
  scores, and the same labels, as the lock-per-query path."""
  index, audio, _ = served
  batched, locked = _client(index), _client(index, batching=False)
  for name in ("long_sweep.wav", "a b&c é.wav", os.path.join("high", "high_2.wav")):
    path = os.path.join(audio, name)
    a = batched.post("/api/query", files=_upload(path), data={"per_file": "false"}).json()
    b = locked.post("/api/query", files=_upload(path), data={"per_file": "false"}).json()
    assert [h["id"] for h in a["results"]] == [h["id"] for h in b["results"]]
    np.testing.assert_allclose([h["score"] for h in a["results"]],
                               [h["score"] for h in b["results"]], atol=1e-5)
    ca = batched.post("/api/classify", files=_upload(path)).json()
    cb = locked.post("/api/classify", files=_upload(path)).json()
    assert ca["label"] == cb["label"]
    np.testing.assert_allclose(list(ca["probabilities"].values()),
                               list(cb["probabilities"].values()), atol=1e-5)


class _Model:
  """A stand-in exported model: embedding = the window's mean, logits = its sum; records
  batch shapes; each pass waits for `gate` (to hold the worker)."""

  meta = {"embedding_dim": 1, "classes": ["a"]}

  def __init__(self):
    self.shapes, self.gate, self.entered = [], threading.Event(), 0
    self.gate.set()

  def __call__(self, x):
    self.entered += 1
    self.gate.wait()
    self.shapes.append(x.shape[0])
    return {"embedding": x.mean(axis=(1, 2))[:, None], "logits": x.sum(axis=(1, 2))[:, None]}


def _until(condition):
  """Wait for `condition` (a state the test brings about, not a time)."""
  while not condition():
    time.sleep(0.005)


def test_batcher_batches_concurrent_jobs_in_powers_of_two_and_refuses_when_full():
  from jaxaudio.search.batching import Batcher, Busy, pow2_chunks
  assert pow2_chunks(0, 64) == [] and pow2_chunks(1, 64) == [(0, 1)]
  assert pow2_chunks(27, 64) == [(0, 16), (16, 24), (24, 26), (26, 27)]
  assert pow2_chunks(130, 64) == [(0, 64), (64, 128), (128, 130)]
  model, batcher = _Model(), Batcher(max_batch=16, window_ms=0.0, max_queued=64)
  jobs = [np.full((n, 2, 3), float(i), np.float32) for i, n in enumerate((1, 3, 2, 5, 4))]
  model.gate.clear()   # the first job holds the worker until the other four are queued
  with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
    futures = [pool.submit(batcher.run, model, jobs[0])]
    _until(lambda: model.entered == 1)
    futures += [pool.submit(batcher.run, model, w) for w in jobs[1:]]
    _until(lambda: batcher._queue.qsize() == 4)   # pylint: disable=protected-access
    model.gate.set()
    outs = [f.result(timeout=60) for f in futures]
  for i, (w, (emb, logits)) in enumerate(zip(jobs, outs)):
    assert emb.shape == (len(w), 1) and np.all(emb == i) and np.all(logits == 6 * i)
  assert batcher.batches == 2 and model.shapes == [1, 8, 4, 2]   # 14 windows, no padding
  big = np.ones((40, 2, 3), np.float32)   # more than a batch: chunks of max_batch, then less
  assert batcher.run(model, big)[0].shape == (40, 1) and model.shapes[-3:] == [16, 16, 8]
  model.shapes.clear()
  batcher.warm(model, (2, 3))   # compiles every batch size, ahead of the next job
  assert batcher.run(model, jobs[0])[0].shape == (1, 1)
  assert model.shapes == [1, 2, 4, 8, 16, 1]
  assert [a.shape for a in batcher.run(model, np.zeros((0, 2, 3), np.float32))] == [(0, 1), (0, 1)]
  batcher.close()
  # Full queue: the worker held in a pass, one job waiting, the next is refused at once.
  model = _Model()
  model.gate.clear()
  small = Batcher(max_batch=4, window_ms=0.0, max_queued=1)
  pool = concurrent.futures.ThreadPoolExecutor(2)
  held = pool.submit(small.run, model, np.ones((4, 2, 3), np.float32))   # a whole batch:
  _until(lambda: model.entered == 1)   # the worker took it and waits at the gate
  queued = pool.submit(small.run, model, np.ones((4, 2, 3), np.float32))
  _until(lambda: small._queue.qsize() == 1)   # pylint: disable=protected-access
  with pytest.raises(Busy):
    small.run(model, np.ones((1, 2, 3), np.float32))
  model.gate.set()
  assert held.result(timeout=30)[0].shape == (4, 1) and queued.result(timeout=30)[0].shape == (4, 1)
  pool.shutdown()
  small.close()


def test_the_server_follows_index_updates_and_keeps_serving_through_a_broken_one(served,
                                                                                 tmp_path):
  from jaxaudio.search import indexer, service, store
  _, audio, export_dir = served
  folder, index = tmp_path / "audio", str(tmp_path / "index")
  shutil.copytree(audio, folder)
  indexer.update(index, str(folder), export_dir, workers=1, progress=False)
  client = _client(index)
  assert client.get("/api/index").json()["files"] == 11
  new = str(folder / "new_tone.wav")
  sf.write(new, tone(2500, 1.5, seed=9), SR)
  indexer.update(index, str(folder), export_dir, workers=1, progress=False)
  time.sleep(service.RELOAD_CHECK_SECONDS + 0.1)
  r = client.post("/api/query", files=_upload(new), data={"k": "1"})
  assert r.json()["results"][0]["id"] == service.file_id(new)
  assert client.get("/api/index").json()["files"] == 12
  # A manifest caught half-written (or naming a segment that is gone): the loaded index
  # keeps answering, and the next good manifest is picked up.
  manifest = os.path.join(index, store.MANIFEST)
  good = open(manifest).read()
  with open(manifest, "w") as f:
    f.write(good[: len(good) // 2])
  time.sleep(service.RELOAD_CHECK_SECONDS + 0.1)
  r = client.post("/api/query", files=_upload(new), data={"k": "1"})
  assert r.status_code == 200 and r.json()["results"][0]["id"] == service.file_id(new)
  with open(manifest, "w") as f:   # the writer finishes
    f.write(good)
  os.remove(new)
  indexer.update(index, str(folder), export_dir, workers=1, progress=False)
  time.sleep(service.RELOAD_CHECK_SECONDS + 0.1)
  assert client.get("/api/index").json()["files"] == 11


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served):
  """`python -m jaxaudio.search serve` as a real process on a loopback port."""
  index = served[0]
  port = _free_port()
  proc = subprocess.Popen([sys.executable, "-m", "jaxaudio.search", "serve", f"--index={index}",
                           f"--port={port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 120
  while time.time() < deadline:
    try:
      if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
        break
    except httpx.HTTPError:
      time.sleep(0.3)
    assert proc.poll() is None, proc.stdout.read()
  else:
    proc.kill()
    pytest.fail("the server did not answer /api/health within 120 s")
  yield url
  proc.terminate()
  out, _ = proc.communicate(timeout=30)
  assert "serving" in out and f"http://127.0.0.1:{port}/" in out and "Traceback" not in out


def test_concurrent_clients_each_get_their_own_answer(served, server):
  from jaxaudio.search.service import file_id
  _, audio, _ = served
  paths = sorted(os.path.join(audio, c, f"{c}_{i}.wav") for c in ("low", "mid", "high")
                 for i in range(3))[:8]

  def ask(path):
    with open(path, "rb") as f:
      r = httpx.post(f"{server}/api/query", files={"audio": (os.path.basename(path), f)},
                     data={"k": "3"}, timeout=60)
    return r.json()["results"][0]["id"]

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for _ in range(2):
      assert list(pool.map(ask, paths)) == [file_id(p) for p in paths]


def _chromium():
  """Headless Chromium through its WebDriver; its fake microphone plays a beep."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service as ChromeService
  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--autoplay-policy=no-user-gesture-required", "--window-size=1200,1400",
              "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
    options.add_argument(arg)
  return webdriver.Chrome(options=options, service=ChromeService(
      shutil.which("chromedriver") or "/usr/bin/chromedriver"))


def test_page_records_from_the_microphone_and_searches_with_the_recording(server):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  driver = _chromium()
  try:
    wait = WebDriverWait(driver, 60)
    driver.get(server + "/")
    wait.until(lambda d: "files" in d.find_element(By.ID, "index-info").text)
    record = driver.find_element(By.ID, "record")
    record.click()
    wait.until(lambda d: record.get_attribute("aria-pressed") == "true")
    started = time.monotonic()
    # While it records, the model's labels for the last window show live (the index's classes)
    classes = httpx.get(server + "/api/index", timeout=30).json()["classes"]
    live = driver.find_element(By.ID, "live-labels")
    wait.until(lambda d: any(c in live.text for c in classes))
    assert live.text.startswith("live: ") and "%" in live.text
    time.sleep(max(0.5, 3.0 - (time.monotonic() - started)))   # about 3 s in all
    recorded = time.monotonic() - started
    record.click()   # stop: the recording becomes a WAV upload and is searched
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for"))
    assert driver.find_element(By.ID, "query-name").text == "recording.wav"
    seconds = float(driver.find_element(By.ID, "query-seconds").text.split()[0])
    assert 2.0 < seconds < recorded + 2.0
    assert len(driver.find_elements(By.CSS_SELECTOR, "#results li")) == 10
    assert record.get_attribute("aria-pressed") == "false"
  finally:
    driver.quit()


def _new_results(wait, old_item):
  """Wait for the answer to the search just started: the page replaces its result list when
  the answer arrives (so an item of the last list goes stale), then reports it in #status."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  wait.until(ec.staleness_of(old_item))
  wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for"))


def test_page_in_a_real_browser_finds_the_query_and_plays_from_the_match(served, server,
                                                                         tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  _, audio, _ = served
  driver = _chromium()
  try:
    wait = WebDriverWait(driver, 60)
    driver.get(server + "/")
    wait.until(lambda d: "files" in d.find_element(By.ID, "index-info").text)
    assert "11 files" in driver.find_element(By.ID, "index-info").text
    long = os.path.join(audio, "long_sweep.wav")
    driver.find_element(By.ID, "file").send_keys(long)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for"))
    items = driver.find_elements(By.CSS_SELECTOR, "#results li")
    assert items[0].get_attribute("data-name") == "long_sweep.wav"
    assert "score 1.000" in items[0].text
    # Search with the second half of the file: the match is the 1500 Hz part, 3.48 s in.
    start, end = driver.find_element(By.ID, "start"), driver.find_element(By.ID, "end")
    for box, value in ((start, 3 * HOP_SECONDS), (end, 5 * HOP_SECONDS)):
      box.clear()
      box.send_keys(f"{value:.3f}")
    driver.find_element(By.ID, "search").click()
    _new_results(wait, items[0])
    first = driver.find_element(By.CSS_SELECTOR, "#results li")
    assert first.get_attribute("data-name") == "long_sweep.wav"
    offset = float(first.get_attribute("data-offset"))
    assert offset == pytest.approx(3 * HOP_SECONDS, abs=0.01)
    labels = driver.find_element(By.ID, "labels").text
    assert labels.startswith("model's labels:") and any(c in labels for c in ("low", "mid", "high"))
    first.find_element(By.CSS_SELECTOR, "button.play").click()
    player = first.find_element(By.TAG_NAME, "audio")
    wait.until(lambda d: d.execute_script("return arguments[0].currentTime > 0 && "
                                          "!arguments[0].paused", player))
    now = driver.execute_script("return arguments[0].currentTime", player)
    assert offset <= now < offset + 2.0, (offset, now)
    # The thumbnail is drawn (not blank) with the match highlighted.
    painted = driver.execute_script(
        "const c = arguments[0].querySelector('canvas.thumb');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;", first)
    assert painted > 1000
    shot = tmp_path / "search_page.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10000
    if os.environ.get("JAXAUDIO_SCREENSHOT_DIR"):
      shutil.copy(shot, os.environ["JAXAUDIO_SCREENSHOT_DIR"])
    # Keyboard: "Search with this" on the second result searches by its id.
    second = driver.find_elements(By.CSS_SELECTOR, "#results li")[1]
    name = second.get_attribute("data-name")
    second.find_element(By.CSS_SELECTOR, "button.again").send_keys("\n")
    wait.until(lambda d: name in d.find_element(By.ID, "query-name").text)
    _new_results(wait, first)
    assert driver.find_element(By.CSS_SELECTOR, "#results li").get_attribute("data-name") == name
  finally:
    driver.quit()
