"""`python -m jaxaudio.predict` and ExportedModel.predict: the evaluation's per-clip numbers
on a test folder, events on a long recording, thresholds chosen on validation, bad files."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
from scipy.special import expit, log_softmax, softmax
from sklearn.metrics import f1_score

from datafixtures import SR, tone, write_class_folder

TONES = {"low": 200.0, "mid": 500.0, "high": 1100.0}


def _noise(seconds, seed, level=0.1):
  rng = np.random.default_rng(seed)
  return (level * rng.standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
  """A small scratch model trained on three tones and a `background` class of noise, and a
  40 s recording of noise with the tones at known places."""
  from jaxaudio.runs import configs
  from jaxaudio.workflows import finetune
  tmp = tmp_path_factory.mktemp("detector")
  clips = tmp / "clips"
  for c, f in TONES.items():
    os.makedirs(clips / c)
    for i in range(12):
      x = tone(f * (1 + 0.02 * (i % 4)), 3.0, seed=i) + _noise(3.0, 50 + i, 0.01 * (i % 7))
      sf.write(str(clips / c / f"{c}_{i}.wav"), x, SR)
  os.makedirs(clips / "background")
  for i in range(12):
    sf.write(str(clips / "background" / f"bg_{i}.wav"), _noise(3.0, 100 + i, 0.05 + 0.02 * i), SR)
  cfg = configs.base_config()
  cfg.data.source, cfg.data.prepared_dir = f"folder:{clips}", str(tmp / "prepared")
  cfg.data.val_fraction, cfg.data.test_fraction = 0.25, 0.25
  # Levels as recorded: a field recording is normalised as a whole, so its quiet stretches
  # would not look like background clips normalised one by one.
  cfg.data.loudness = "none"
  cfg.model.init, cfg.model.widths = "scratch", (4, 8, 8, 16)
  cfg.train.update(num_steps=160, eval_every=40, log_every=40, batch_size=8, probe_steps=0,
                   param_groups=(("^backbone/", "backbone"), ("^head/", "head")),
                   group_lr_mult={"head": 1.0, "backbone": 1.0}, learning_rate=1e-2,
                   epochs=0)
  workdir = str(tmp / "run")
  test = finetune.run(cfg, workdir)
  assert test["accuracy"] == 1.0, test
  # 40 s: noise, with low at 6-12 s, high at 18-23 s and mid at 30-35 s over it.
  spans = [("low", 6.0, 12.0), ("high", 18.0, 23.0), ("mid", 30.0, 35.0)]
  x = _noise(40.0, 7, 0.05)
  for label, lo, hi in spans:
    a, b = int(lo * SR), int(hi * SR)
    x[a:b] += tone(TONES[label], hi - lo, seed=3)[: b - a]
  long = str(tmp / "field" / "long.wav")
  os.makedirs(os.path.dirname(long))
  sf.write(long, x, SR)
  return workdir, long, spans


def _clip_means(window_probs, clip_ids, n_clips):
  """[n_clips, classes]: each clip's mean window probability, by a loop over clip ids."""
  out = np.zeros((n_clips, window_probs.shape[1]))
  for c in range(n_clips):
    rows = [p for p, i in zip(window_probs, clip_ids) if i == c]
    assert rows, f"clip {c} has no window"
    out[c] = np.sum(rows, axis=0) / len(rows)
  return out


def test_group_mean_and_clip_level_against_a_loop_over_clips():
  """Clips in any order, of 1-4 windows: sorted clip ids, each clip's mean probability, its
  first window's label; logits that give back those means (softmax, or sigmoid per class)."""
  from jaxaudio.train import forward
  from jaxaudio.models import outputs
  rng = np.random.default_rng(0)
  sizes = {7: 3, 2: 1, 40: 4, 5: 2}
  clip = rng.permutation(np.repeat(list(sizes), list(sizes.values())))
  logits = rng.normal(0, 3, (len(clip), 4))
  label = {c: rng.integers(0, 4) for c in sizes}
  labels = np.array([label[c] for c in clip])
  first = {c: int(np.flatnonzero(clip == c)[0]) for c in sizes}
  ids = sorted(sizes)
  for multi, squash in ((False, lambda z: softmax(z, axis=1)), (True, expit)):
    probs = squash(logits)
    means = {c: np.mean([p for p, i in zip(probs, clip) if i == c], axis=0) for c in ids}
    keys, mean, firsts = outputs.group_mean(probs, clip)
    assert keys.tolist() == ids and firsts.tolist() == [first[c] for c in ids]
    np.testing.assert_allclose(mean, [means[c] for c in ids], rtol=1e-12)
    out = forward.clip_level({"logits": logits, "clip": clip, "label": labels}, multi)
    assert out["clip"].tolist() == ids and out["label"].tolist() == [label[c] for c in ids]
    np.testing.assert_allclose(squash(out["logits"]), [means[c] for c in ids], atol=1e-9)
  # Single-label clip logits are log mean probabilities: log_softmax leaves them unchanged.
  out = forward.clip_level({"logits": logits, "clip": clip, "label": labels}, False)
  np.testing.assert_allclose(log_softmax(out["logits"], axis=1), out["logits"], atol=1e-9)
  keys, mean, firsts = outputs.group_mean(np.eye(3)[[2, 0, 2, 1]], np.array(["b", "a", "b", "c"]))
  assert keys.tolist() == ["a", "b", "c"] and firsts.tolist() == [1, 0, 3]
  np.testing.assert_array_equal(mean, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_predict_on_a_test_folder_gives_the_evaluations_per_clip_probabilities(trained, cli,
                                                                                tmp_path):
  from jaxaudio.inference import exported
  from jaxaudio.exports import stablehlo
  from jaxaudio.data import pipeline
  from jaxaudio.data.prepare import prepare
  from jaxaudio.evaluation import heldout
  from jaxaudio.runs.rundir import open_run
  workdir, test_report = trained
  run = open_run(workdir)
  prepared, _ = prepare(run.cfg.data, run.info.spec, progress=False)
  windows = heldout.window_outputs(heldout.apply_fn(run, run.variables),
                                      pipeline.eval_batches(prepared, "test", 32, 0, 1))
  root = run.cfg.data.source.split(":", 1)[1]
  keys = prepared.meta["splits"]["test"]["clip_keys"]
  want = _clip_means(softmax(windows["logits"], axis=1), windows["clip"], len(keys))
  # The whole folder (train, validation and test files) goes through predict.
  out = tmp_path / "p.csv"
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={root}", f"--out={out}",
          "--top_k=2")
  assert r.returncode == 0, r.stderr
  assert "predicted 30 files" in r.stdout and "files/s" in r.stdout
  rows = {os.path.relpath(row["file"], root): row for row in _read_csv(out)}
  assert len(rows) == 30
  assert list(_read_csv(out)[0]) == ["file", "label"] + run.classes + ["top_k"]
  got = np.array([[float(rows[k][c]) for c in run.classes] for k in keys])
  np.testing.assert_allclose(got, want, atol=2e-6)
  assert [rows[k]["label"] for k in keys] == [run.classes[i] for i in want.argmax(1)]
  accuracy = np.mean([rows[k]["label"] == k.split(os.sep)[0] for k in keys])
  assert accuracy == pytest.approx(test_report["accuracy"])
  # The Python API: a path and the same file as a waveform give what the CLI wrote.
  model = exported.load(stablehlo.for_run(workdir))
  path = os.path.join(root, keys[0])
  p = model.predict(path)
  np.testing.assert_allclose(p.probabilities, got[0], atol=2e-6)
  x, sr = sf.read(path, dtype="float32")
  np.testing.assert_allclose(model.predict(x, sr=sr).probabilities, p.probabilities, atol=1e-6)
  with pytest.raises(ValueError, match="sample rate"):
    model.predict(x)


def test_events_on_a_long_recording_land_on_the_sounds(detector, cli, tmp_path):
  workdir, long, spans = detector
  out = tmp_path / "p.json"
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={long}", f"--out={out}",
          "--json", "--windows", "--hop=0.25", "--threshold=0.5")
  assert r.returncode == 0, r.stderr
  (item,) = json.loads(out.read_text())
  assert item["file"] == long and len(item["windows"]) >= 60
  starts = [w["start"] for w in item["windows"]]
  assert starts[0] == 0.0 and np.allclose(np.diff(starts), 25 * 1024 / SR, atol=1e-3)
  tone_events = [e for e in item["events"] if e["label"] != "background"]
  assert [e["label"] for e in tone_events] == [s[0] for s in spans], item["events"]
  errors = []
  for e, (_, lo, hi) in zip(tone_events, spans):
    errors += [e["start"] - lo, e["end"] - hi]
    assert 0.5 <= e["peak"] <= 1.0
  # A window fires once enough of it holds the sound: each boundary lies within half a
  # window plus half a hop (2.32 s windows, 0.58 s hop) of the truth.
  assert np.max(np.abs(errors)) < (2.32 + 0.58) / 2, errors
  print("onset/offset errors (s):", np.round(errors, 3))
  # The per-window CSV and the event CSV say the same.
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={long}",
          f"--out={tmp_path / 'p.csv'}", "--windows", "--hop=0.25", "--threshold=0.5")
  assert r.returncode == 0, r.stderr
  events = _read_csv(tmp_path / "p.events.csv")
  assert [(e["label"], round(float(e["start"]), 3)) for e in events] == \
      [(e["label"], round(e["start"], 3)) for e in item["events"]]
  assert len(_read_csv(tmp_path / "p.windows.csv")) == len(item["windows"])


def test_validation_thresholds_and_raven_selection_table(detector, cli, tmp_path):
  from jaxaudio.evaluation import thresholds
  workdir, long, spans = detector
  out = tmp_path / "sel.txt"
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={long}", f"--out={out}",
          "--format=raven", "--threshold=validation", "--hop=0.25")
  assert r.returncode == 0, r.stderr
  stored = thresholds.for_run(workdir)
  assert stored["split"] == "validation" and stored["clips"] == 12
  assert os.path.exists(thresholds.path_for(workdir, stored["step"]))
  assert all(0.0 < v["threshold"] <= 1.0 for v in stored["classes"].values())
  lines = out.read_text().splitlines()
  header = lines[0].split("\t")
  assert header[:7] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                        "Low Freq (Hz)", "High Freq (Hz)"]
  rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
  tones = [row for row in rows if row["Label"] != "background"]
  assert [row["Label"] for row in tones] == [s[0] for s in spans]
  assert [row["Selection"] for row in rows] == [str(i + 1) for i in range(len(rows))]
  for row, (_, lo, _) in zip(tones, spans):
    assert abs(float(row["Begin Time (s)"]) - lo) < 1.0
    assert row["Begin Path"] == long and float(row["High Freq (Hz)"]) == 22050.0


def test_best_f1_thresholds_match_a_brute_force_search():
  from jaxaudio.evaluation.thresholds import best_f1
  rng = np.random.default_rng(0)
  onehot = rng.random((200, 3)) < [0.1, 0.4, 0.0]
  probs = np.clip(onehot * 0.3 + rng.random((200, 3)) * 0.7, 0, 1)
  got = best_f1(probs, onehot, ["a", "b", "c"])
  for j, c in enumerate("ab"):
    scores = np.unique(probs[:, j])
    f1s = {t: f1_score(onehot[:, j], probs[:, j] >= t) for t in scores}
    best = max(f1s.values())
    assert got[c]["f1"] == pytest.approx(best)
    # The threshold sits in the middle of the gap below the lowest best cut.
    t = got[c]["threshold"]
    assert f1_score(onehot[:, j], probs[:, j] >= t) == pytest.approx(best)
    cut = min(k for k, v in f1s.items() if v == pytest.approx(best))
    lower = scores[scores < cut]
    assert t == pytest.approx((cut + (lower.max() if lower.size else 0.0)) / 2)
    assert got[c]["support"] == int(onehot[:, j].sum())
  assert got["c"] == {"threshold": 0.5, "f1": None, "precision": None, "recall": None,
                      "support": 0}


def test_detect_events_merges_runs_and_gives_each_window_its_middle():
  from jaxaudio.inference.predictor import detect_events
  # Windows of 2 s every 0.5 s: window i stands for [i*0.5 + 0.75, i*0.5 + 1.25).
  start = np.arange(10) * 0.5
  probs = np.zeros((10, 2))
  probs[3:6, 0] = [0.6, 0.9, 0.7]     # windows 3-5
  probs[9, 1] = 0.8                   # the last window
  probs[0, 1] = 0.55                  # the first window
  events = detect_events(start, probs, ["a", "b"], np.array([0.5, 0.5]), 2.0, 0.5, 6.2)
  assert [(e.label, e.start, e.end, e.peak) for e in events] == [
      ("b", 0.0, 1.25, 0.55), ("a", 2.25, 3.75, 0.9), ("b", 5.25, 6.2, 0.8)]
  assert detect_events(start, probs, ["a", "b"], np.array([0.95, 0.95]), 2.0, 0.5, 6.2) == []


def test_bad_files_are_reported_and_skipped_and_bad_flags_are_one_sentence(trained, cli,
                                                                          tmp_path):
  workdir, _ = trained
  folder = tmp_path / "new"
  write_class_folder(str(folder), per_class=1)
  (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
  (folder / "notes.txt").write_text("not audio")
  out = tmp_path / "p.csv"
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={folder}", f"--out={out}")
  assert r.returncode == 0, r.stderr
  assert "skipped:" in r.stderr and "broken.wav" in r.stderr and "skipped 1 unreadable" in r.stdout
  assert len(_read_csv(out)) == 3
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={folder}", f"--out={out}",
          "--strict")
  assert r.returncode == 2 and "broken.wav" in r.stderr and "--strict" in r.stderr
  assert "Traceback" not in r.stderr
  for flags, words in ((["--threshold=high"], "neither a probability"),
                       (["--hop=2"], "--hop"),
                       ([f"--model={tmp_path}"], "not an exported jaxaudio model"),
                       ([f"--out={tmp_path}/missing/p.csv"], "no such folder"),
                       (["--json", "--format=raven"], "two output formats")):
    args = [f"--workdir={workdir}"] * (not any(f.startswith("--model") for f in flags))
    r = cli("jaxaudio.predict", *args, f"--audio={folder}", f"--out={out}", *flags)
    assert r.returncode == 2 and words in r.stderr, (flags, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  only_bad = tmp_path / "bad"
  only_bad.mkdir()
  (only_bad / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={only_bad}", f"--out={out}")
  assert r.returncode == 2 and "none of the 1 files" in r.stderr


def test_multi_label_predictions_are_sigmoid_means_with_thresholded_labels(multilabel_trained,
                                                                           cli, tmp_path):
  from jaxaudio.data import pipeline
  from jaxaudio.data.prepare import prepare
  from jaxaudio.evaluation import heldout
  from jaxaudio.runs.rundir import open_run
  workdir, clips = multilabel_trained
  run = open_run(workdir)
  assert run.multi_label and run.classes == ["high", "low", "mid", "tonal"]
  prepared, _ = prepare(run.cfg.data, run.info.spec, progress=False)
  windows = heldout.window_outputs(heldout.apply_fn(run, run.variables),
                                      pipeline.eval_batches(prepared, "test", 32, 0, 1))
  keys = prepared.meta["splits"]["test"]["clip_keys"]
  want = _clip_means(expit(windows["logits"]), windows["clip"], len(keys))
  out = tmp_path / "p.json"
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={clips}", f"--out={out}",
          "--json", "--threshold=0.5")
  assert r.returncode == 0, r.stderr
  items = {os.path.relpath(i["file"], clips): i for i in json.loads(out.read_text())}
  got = np.array([[items[k]["probabilities"][c] for c in run.classes] for k in keys])
  np.testing.assert_allclose(got, want, atol=2e-6)
  for k in keys:   # sigmoid scores: independent per class, each label at or above 0.5
    p = items[k]["probabilities"]
    assert items[k]["labels"] == sorted((c for c in p if p[c] >= 0.5), key=lambda c: -p[c])
  # Without --threshold the CSV of a multi-label run still lists labels at 0.5.
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={clips}",
          f"--out={tmp_path / 'p.csv'}")
  rows = _read_csv(tmp_path / "p.csv")
  assert list(rows[0])[-1] == "labels" and len(rows) == 24


def test_a_live_stream_reports_the_offline_events_once_each_as_they_end(detector, cli, tmp_path):
  """predict --stream on the recording's PCM through a pipe: the windows and events of
  predict --windows on the file (same starts, probabilities to 1e-5, the same events once
  each), each event written as it ends; ExportedModel.stream gives them block by block within
  one window and one hop of the event's end."""
  import subprocess
  import sys
  from jaxaudio.exports import stablehlo
  from jaxaudio.inference import exported
  from jaxaudio.inference.stream import pcm_blocks
  workdir, long, _ = detector
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={long}",
          f"--out={tmp_path / 'off.csv'}", "--windows", "--hop=0.25", "--threshold=0.5")
  assert r.returncode == 0, r.stderr
  offline = _read_csv(tmp_path / "off.events.csv")
  off_windows = _read_csv(tmp_path / "off.windows.csv")
  pcm, rate = sf.read(long, dtype="int16")
  live = tmp_path / "live.events.csv"
  proc = subprocess.run(
      [sys.executable, "-m", "jaxaudio.predict", "--stream", f"--workdir={workdir}",
       "--stream_format=s16le", f"--stream_rate={rate}", "--stream_loudness=none", "--windows",
       "--hop=0.25", "--threshold=0.5", f"--out={live}"],
      input=pcm.astype("<i2").tobytes(), capture_output=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr.decode()[-3000:]
  printed = list(csv.reader(proc.stdout.decode().splitlines()))
  header, rows = printed[0], printed[1:]
  win_rows = [dict(zip(header, r)) for r in rows if r[0] == "window"]
  assert [w["start"] for w in win_rows] == [w["start"] for w in off_windows]
  classes = header[4:]
  np.testing.assert_allclose([[float(w[c]) for c in classes] for w in win_rows],
                             [[float(w[c]) for c in classes] for w in off_windows], atol=1e-5)
  streamed = _read_csv(live)
  key = lambda e: (e["label"], e["start"], e["end"])  # noqa: E731
  assert sorted(map(key, streamed)) == sorted(map(key, offline)) and len(offline) >= 3
  assert len(set(map(key, streamed))) == len(streamed)          # never the same sound twice
  np.testing.assert_allclose([float(e["peak"]) for e in sorted(streamed, key=key)],
                             [float(e["peak"]) for e in sorted(offline, key=key)], atol=1e-5)
  # In Python, block by block: each event comes out no later than one window + one hop after
  # its end (the first window that no longer holds it).
  model = exported.load(stablehlo.for_run(workdir))
  stream = model.live(threshold=0.5, hop=0.25, loudness="none")
  with open(long.replace(".wav", ".s16"), "wb") as f:
    f.write(pcm.astype("<i2").tobytes())
  latency, heard = [], 0.0
  with open(long.replace(".wav", ".s16"), "rb") as f:
    for block in pcm_blocks(f, "s16le", 1, rate, rate, block_seconds=0.05):
      heard += len(block) / rate
      _, ended = stream.push(block)
      latency += [heard - e.end for e in ended]
  _, ended = stream.close()
  assert latency and max(latency) <= stream.window_seconds + stream.hop_seconds, latency
  assert len(latency) + len(ended) == len(offline)


_FILE_MICROPHONE = """pcm.filemic {{
  type file
  slave.pcm "null"
  file "/dev/null"
  infile "{infile}"
  format "raw"
}}
"""


def test_a_microphone_through_portaudio_reports_the_offline_events(detector, cli, tmp_path):
  """predict --stream --stream_device: the recording captured from a PortAudio input device
  (ALSA's `file` plugin, a capture device that plays a raw file, defined in the ~/.asoundrc
  of the command's HOME) gives the events of predict --windows on the file, once each."""
  workdir, long, _ = detector
  r = cli("jaxaudio.predict", f"--workdir={workdir}", f"--audio={long}",
          f"--out={tmp_path / 'off.csv'}", "--windows", "--hop=0.25", "--threshold=0.5")
  assert r.returncode == 0, r.stderr
  offline = _read_csv(tmp_path / "off.events.csv")
  pcm, rate = sf.read(long, dtype="int16")
  raw = tmp_path / "mic.s16"
  raw.write_bytes(pcm.astype("<i2").tobytes())
  home = tmp_path / "home"
  home.mkdir()
  (home / ".asoundrc").write_text(_FILE_MICROPHONE.format(infile=raw))
  live = tmp_path / "mic.events.csv"
  r = cli("jaxaudio.predict", "--stream", f"--workdir={workdir}", "--stream_device=filemic",
          f"--stream_rate={rate}", f"--stream_seconds={len(pcm) / rate}",
          "--stream_loudness=none", "--hop=0.25", "--threshold=0.5", f"--out={live}",
          env={"HOME": str(home)})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "from device 'filemic'" in r.stderr
  streamed = _read_csv(live)
  key = lambda e: (e["label"], e["start"], e["end"])  # noqa: E731
  assert sorted(map(key, streamed)) == sorted(map(key, offline)) and len(offline) >= 3
  assert {e["file"] for e in streamed} == {"device:filemic"}
  # A device that is not there is one sentence.
  r = cli("jaxaudio.predict", "--stream", f"--workdir={workdir}", "--stream_device=nosuchmic",
          f"--out={tmp_path / 'no.csv'}", env={"HOME": str(home)})
  assert r.returncode == 2 and "cannot open input device 'nosuchmic'" in r.stderr, r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr
