"""The agile loop in the served page and its HTTP API: the collection to start from, verdicts
with buttons and keys, Learn (threshold, precision, histogram), the ranking to label next,
detections; two browser sessions labelling at once lose nothing."""

import csv
import io
import os
import shutil

import httpx2 as httpx
from test_serve import _chromium, served, server  # noqa: F401  (fixtures: index, real server)


def _api(server, path, method="GET", **kwargs):  # noqa: F811
  r = httpx.request(method, f"{server}{path}", timeout=120, **kwargs)
  return r


def test_label_api_learn_rank_detect_with_ids_and_sentences(served, server):  # noqa: F811
  index, audio, _ = served
  c = _api(server, "/api/collection?sample=5&seed=1").json()
  assert c["files"] == 11 and len(c["sample"]) == 5 and c["label_counts"] == {}
  assert all(set(w) == {"id", "name", "offset", "end", "audio_url"} for w in c["sample"])
  q = _api(server, "/api/query", "POST", files={"audio": open(os.path.join(
      audio, "high", "high_0.wav"), "rb")}, data={"k": "11"}).json()["results"]
  highs = [r for r in q if r["name"].startswith("high")]
  others = [r for r in q if r["name"].startswith(("low", "mid"))]
  for r, positive in [(highs[0], True), (highs[1], True), (others[0], False),
                      (others[1], False)]:
    got = _api(server, "/api/labels", "POST", json={"id": r["id"], "start": r["offset"],
                                                    "end": r["end"], "label": "high",
                                                    "positive": positive})
    assert got.status_code == 200, got.text
    assert got.json()["positive"] is positive and "file" not in got.json()
  # Bad verdicts: one sentence, a 4xx, nothing stored.
  for body, status, words in (
      ({"id": "nope", "start": 0, "end": 1, "label": "high"}, 404, "no indexed file has id"),
      ({"id": highs[0]["id"], "start": 0, "end": 99, "label": "high"}, 400, "past the file's end"),
      ({"id": highs[0]["id"], "start": 0, "end": 1, "label": ""}, 400, "is not a class name")):
    r = _api(server, "/api/labels", "POST", json=body)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert index not in r.text
  counts = _api(server, "/api/labels?limit=0").json()
  assert counts == {"counts": {"high": {"positive": 2, "negative": 2}}, "labels": []}
  learned = _api(server, "/api/learn", "POST", json={"labels": ["high"]})
  assert learned.status_code == 200, learned.text
  h = learned.json()["classes"]["high"]
  assert 0 < h["threshold"] < 1 and sum(h["histogram"]["counts"]) == h["archive_windows"]
  ranked = _api(server, "/api/rank?label=high&k=3&strategy=margin").json()
  assert ranked["label"] == "high" and len(ranked["results"]) == 3
  assert all("file" not in r and r["audio_url"].startswith("/api/audio/")
             for r in ranked["results"])
  labelled = {(r["id"], r["offset"]) for r in highs[:2] + others[:2]}
  assert not labelled & {(r["id"], r["offset"]) for r in ranked["results"]}
  r = _api(server, "/api/rank?label=nothing")
  assert r.status_code == 409 and "has no classifier for 'nothing'" in r.json()["error"]
  events = _api(server, "/api/detect?label=high&threshold=0.5")
  assert events.status_code == 200 and events.headers["content-type"].startswith("text/csv")
  rows = list(csv.DictReader(io.StringIO(events.text)))
  assert rows and {r["file"] for r in rows} <= {f"{n}" for n in os.listdir(
      os.path.join(audio, "high"))} | {"long_sweep.wav", "a b&c é.wav"} | {
          f for d in ("low", "mid") for f in os.listdir(os.path.join(audio, d))}
  assert index not in events.text and audio not in events.text
  gone = _api(server, f"/api/labels?id={others[1]['id']}&start={others[1]['offset']}"
                      f"&end={others[1]['end']}&label=high", "DELETE").json()
  assert gone == {"removed": 1}


def test_page_labels_learns_and_ranks_in_a_real_browser(served, server, tmp_path):  # noqa: F811
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  driver, other = _chromium(), _chromium()
  try:
    wait = WebDriverWait(driver, 90)
    driver.get(server + "/")
    other.get(server + "/")
    # Opened without a query: the collection, each window with its verdict buttons.
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "random sample"))
    items = driver.find_elements(By.CSS_SELECTOR, "#results li")
    assert len(items) == 10 and all(i.find_elements(By.CSS_SELECTOR, "button.yes") for i in items)
    box = driver.find_element(By.ID, "class")
    box.send_keys("tone")
    assert items[0].find_element(By.CSS_SELECTOR, "button.yes").text == "✓ yes, tone"
    items[0].find_element(By.CSS_SELECTOR, "button.yes").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "counts"), "tone 1 yes / 0 no"))
    # Keys: y / n label the result playing and play the next one.
    items[1].find_element(By.CSS_SELECTOR, "button.play").click()
    wait.until(lambda d: d.execute_script(
        "return !arguments[0].querySelector('audio').paused", items[1]))
    driver.find_element(By.TAG_NAME, "body").send_keys("n")
    wait.until(ec.text_to_be_present_in_element((By.ID, "counts"), "tone 1 yes / 1 no"))
    assert "labelled-no" in items[1].get_attribute("class")
    wait.until(lambda d: d.execute_script(
        "return !arguments[0].querySelector('audio').paused", items[2]))
    # A second browser labels at the same time: both verdicts are kept.
    wait_other = WebDriverWait(other, 90)
    wait_other.until(ec.text_to_be_present_in_element((By.ID, "status"), "random sample"))
    other.find_element(By.ID, "class").send_keys("tone")
    mine = {(i.get_attribute("data-name"), i.get_attribute("data-offset")) for i in items[:4]}
    theirs = [i for i in other.find_elements(By.CSS_SELECTOR, "#results li")
              if (i.get_attribute("data-name"), i.get_attribute("data-offset")) not in mine]
    theirs[0].find_element(By.CSS_SELECTOR, "button.yes").click()
    items[3].find_element(By.CSS_SELECTOR, "button.no").click()
    wait_other.until(ec.text_to_be_present_in_element((By.ID, "counts"), "tone"))
    # Learn: threshold, estimate, histogram; the ranking replaces the results.
    driver.find_element(By.ID, "learn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "windows to label next"))
    text = driver.find_element(By.ID, "learned-text").text
    assert text.startswith("tone: threshold") and "windows above it" in text
    painted = driver.execute_script(
        "const c = document.getElementById('histogram');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;")
    assert painted > 500
    counts = httpx.get(f"{server}/api/labels?limit=0", timeout=30).json()["counts"]
    assert counts["tone"] == {"positive": 2, "negative": 2}
    driver.find_element(By.ID, "rank-margin").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "the least certain"))
    href = driver.find_element(By.ID, "detections").get_attribute("href")
    assert "/api/detect?label=tone" in href
    shot = tmp_path / "labelling_page.png"
    driver.save_screenshot(str(shot))
    if os.environ.get("JAXAUDIO_SCREENSHOT_DIR"):
      shutil.copy(shot, os.environ["JAXAUDIO_SCREENSHOT_DIR"])
  finally:
    driver.quit()
    other.quit()
