"""`search serve`: the JSON API through FastAPI's test client, then a real uvicorn process on
loopback driven by concurrent clients and by headless Chromium (the page test)."""

import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx2 as httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from datafixtures import SR, tone, write_class_folder

HOP_SECONDS = 50 * 1024 / SR   # aiSFX window hop at the training hop (0.5 window)


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
  """(index path, audio folder, export dir): tone files, a long two-part file, a file whose
  name needs quoting."""
  from jaxaudio import exported
  from jaxaudio.search import indexer
  root = tmp_path_factory.mktemp("served")
  audio = root / "audio"
  write_class_folder(str(audio), per_class=3, seconds=1.0)
  sf.write(str(audio / "long_sweep.wav"),
           np.concatenate([tone(300, 3.5, seed=1), tone(1500, 3.5, seed=2)]), SR)
  sf.write(str(audio / "a b&c é.wav"), tone(900, 2.0, seed=5), SR)
  export_dir = exported.for_run(trained[0])
  index = str(root / "index")
  indexer.update(index, str(audio), export_dir, workers=1, progress=False)
  return index, str(audio), export_dir


def _client(index, **kwargs):
  from jaxaudio.search.service import create_app
  return TestClient(create_app(index, **kwargs))


def _upload(path):
  return {"audio": (os.path.basename(path), open(path, "rb"), "audio/wav")}


def _one_sentence(r, status):
  assert r.status_code == status, (r.status_code, r.text)
  body = r.json()
  assert set(body) == {"error"} and body["error"].count(". ") == 0, body
  return body["error"]


def test_query_classify_index_and_health(served):
  from jaxaudio import exported
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
  assert first["file"] == path and first["score"] == pytest.approx(1.0, abs=1e-5)
  assert first["id"] == file_id(path) and first["audio_url"] == f"/api/audio/{first['id']}"
  assert len(body["results"]) == 5 and len({h["file"] for h in body["results"]}) == 5
  # The same query by id, without an upload, ranks the same.
  by_id = client.post("/api/query", data={"id": first["id"], "k": "5"}).json()
  assert [h["file"] for h in by_id["results"]] == [h["file"] for h in body["results"]]
  # A part of the long file, per window: its own window at that offset comes first.
  long = os.path.join(audio, "long_sweep.wav")
  r = client.post("/api/query", files=_upload(long),
                  data={"start": str(3 * HOP_SECONDS), "end": str(5 * HOP_SECONDS),
                        "per_file": "false", "k": "3"})
  hit = r.json()["results"][0]
  assert hit["file"] == long and hit["offset"] == pytest.approx(3 * HOP_SECONDS, abs=1e-3)
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
  assert client.get(url, headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416
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
  assert r.json()["results"][0]["file"] == new
  assert client.get("/api/index").json()["files"] == 12
  # A manifest caught half-written (or naming a segment that is gone): the loaded index
  # keeps answering, and the next good manifest is picked up.
  manifest = os.path.join(index, store.MANIFEST)
  good = open(manifest).read()
  with open(manifest, "w") as f:
    f.write(good[: len(good) // 2])
  time.sleep(service.RELOAD_CHECK_SECONDS + 0.1)
  r = client.post("/api/query", files=_upload(new), data={"k": "1"})
  assert r.status_code == 200 and r.json()["results"][0]["file"] == new
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
  _, audio, _ = served
  paths = sorted(os.path.join(audio, c, f"{c}_{i}.wav") for c in ("low", "mid", "high")
                 for i in range(3))[:8]

  def ask(path):
    with open(path, "rb") as f:
      r = httpx.post(f"{server}/api/query", files={"audio": (os.path.basename(path), f)},
                     data={"k": "3"}, timeout=60)
    return r.json()["results"][0]["file"]

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for _ in range(2):
      assert list(pool.map(ask, paths)) == paths


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
    time.sleep(3.0)
    record.click()   # stop: the recording becomes a WAV upload and is searched
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for"))
    assert driver.find_element(By.ID, "query-name").text == "recording.wav"
    seconds = float(driver.find_element(By.ID, "query-seconds").text.split()[0])
    assert 2.0 < seconds < 5.0
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
