"""The whole agile loop through the commands, on real audio: index an archive of long
recordings, label from the command line and from a ranking, learn, rank, detect, export the
labels, fine-tune on them with jaxaudio.main, re-index with the new model, learn again."""

import csv
import json
import os

import numpy as np
import soundfile as sf

from test_search import export_dir  # noqa: F401  (the tiny trained run, exported)

SR = 44100
EVENTS = (2.0, 6.5, 10.0)      # a 1 s 3 kHz chirp starts here in every recording


def _archive(root):
  """Six 13 s recordings at three sites: noise, a 400 Hz hum, and chirps at EVENTS."""
  rng = np.random.default_rng(0)
  paths = []
  for i in range(6):
    t = np.arange(int(13 * SR)) / SR
    x = 0.02 * rng.standard_normal(len(t)) + 0.05 * np.sin(2 * np.pi * 400 * t)
    for s in EVENTS:
      k = (t >= s) & (t < s + 1.0)
      x[k] += 0.4 * np.sin(2 * np.pi * (2800 + 400 * (t[k] - s)) * t[k])
    path = os.path.join(root, f"site{i % 3}", f"rec{i}.wav")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x.astype(np.float32), SR)
    paths.append(path)
  return paths


def _ok(r):
  assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
  return r


def test_from_an_unlabelled_archive_to_a_fine_tuned_model_and_back(cli, export_dir, tmp_path):  # noqa: F811
  paths = _archive(str(tmp_path / "archive"))
  index = str(tmp_path / "index")
  _ok(cli("jaxaudio.search", "index", f"--model={export_dir}",
          f"--audio={tmp_path / 'archive'}", f"--index={index}", "--workers=1"))
  # Labels from the command line: two chirps, one stretch of hum.
  for path, start, flag in ((paths[0], EVENTS[0], "--label=chirp"),
                            (paths[1], EVENTS[1], "--label=chirp"),
                            (paths[2], 4.0, "--negative")):
    args = [f"--file={path}", f"--start={start}", f"--end={start + 1.0}"]
    if flag == "--negative":
      args += ["--label=chirp", "--negative"]
    else:
      args.append(flag)
    r = _ok(cli("jaxaudio.search", "label", f"--index={index}", *args))
    assert "stored 1 label(s)" in r.stdout
  r = cli("jaxaudio.search", "label", f"--index={index}", f"--file={paths[0]}", "--start=12",
          "--end=20", "--label=chirp")
  assert r.returncode == 2 and "past the file's end" in r.stderr
  r = _ok(cli("jaxaudio.search", "learn", f"--index={index}", "--label=chirp"))
  assert "chirp: 2 positive / 1 negative labels" in r.stdout
  # rank --json: the objects query --json gives; then label them by rank.
  r = _ok(cli("jaxaudio.search", "rank", f"--index={index}", "--label=chirp", "--k=4", "--json"))
  ranking = json.loads(r.stdout)
  assert ranking["label"] == "chirp" and len(ranking["results"]) == 4
  assert set(ranking["results"][0]) == {"file", "offset", "end", "score"}
  assert all(h["file"] in paths for h in ranking["results"])
  (tmp_path / "ranking.json").write_text(r.stdout)
  truth = [any(abs(h["offset"] - s) < 0.6 for s in EVENTS) for h in ranking["results"]]
  accept = ",".join(str(i + 1) for i, t in enumerate(truth) if t) or "1"
  _ok(cli("jaxaudio.search", "label", f"--index={index}", f"--from={tmp_path / 'ranking.json'}",
          f"--accept={accept}", "--reject=rest"))
  _ok(cli("jaxaudio.search", "learn", f"--index={index}", "--label=chirp"))
  # detect: events of the whole archive in predict's events columns.
  out = str(tmp_path / "chirps.csv")
  r = _ok(cli("jaxaudio.search", "detect", f"--index={index}", "--label=chirp",
              f"--out={out}", "--threshold=0.5"))
  rows = list(csv.DictReader(open(out)))
  assert rows and list(rows[0]) == ["file", "start", "end", "label", "peak"]
  assert all(r_["label"] == "chirp" and r_["file"] in paths for r_ in rows)
  # The labels as a training set: segments, explicit negatives, recordings as groups.
  labels_csv = str(tmp_path / "labels.csv")
  r = _ok(cli("jaxaudio.search", "labels", f"--index={index}", f"--export={labels_csv}"))
  assert "chirp:" in r.stdout and "wrote" in r.stdout
  exported = list(csv.DictReader(open(labels_csv)))
  assert {r_["group"] for r_ in exported} <= set(paths)
  workdir = str(tmp_path / "newrun")
  r = _ok(cli("jaxaudio.main", "--config=configs/finetune.py", f"--workdir={workdir}",
              f"--config.data.source=csv:{labels_csv}",
              f"--config.data.prepared_dir={tmp_path / 'prepared'}",
              "--config.data.val_fraction=0.3", "--config.data.test_fraction=0.3",
              "--config.model.init=scratch", "--config.model.widths=(4,8,8,16)",
              "--config.train.num_steps=6", "--config.train.eval_every=3",
              "--config.train.batch_size=4", "--config.evaluate.at_end=False",
              "--config.train.param_groups=(('^backbone/','backbone'),('^head/','head'))",
              timeout=600))
  meta = json.load(open(os.path.join(workdir, "labels.json")))
  assert meta["classes"] == ["chirp"] and meta["multi_label"]
  prepared = [os.path.join(tmp_path / "prepared", d) for d in os.listdir(tmp_path / "prepared")]
  report = json.load(open(os.path.join(prepared[0], "report.json")))
  groups = {s: set(report["splits"][s]["groups"]) for s in ("train", "validation", "test")}
  assert groups["validation"] and not groups["validation"] & groups["train"]
  assert not groups["test"] & groups["train"]     # whole recordings per split
  # Re-index with the fine-tuned model: labels stay, the old classifier is refused, learn
  # again on the new embeddings.
  _ok(cli("jaxaudio.search", "index", f"--workdir={workdir}", "--step=latest",
          f"--audio={tmp_path / 'archive'}", f"--index={index}", "--rebuild", "--workers=1"))
  r = cli("jaxaudio.search", "rank", f"--index={index}", "--label=chirp")
  assert r.returncode == 2 and "run learn again on this index" in r.stderr
  r = _ok(cli("jaxaudio.search", "labels", f"--index={index}"))
  assert "chirp:" in r.stdout
  r = _ok(cli("jaxaudio.search", "learn", f"--index={index}", "--label=chirp"))
  r = _ok(cli("jaxaudio.search", "rank", f"--index={index}", "--label=chirp", "--k=3",
              "--strategy=hybrid", "--json"))
  hybrid = json.loads(r.stdout)
  assert hybrid["strategy"] == "hybrid" and len(hybrid["results"]) == 3
  labelled = [(lab["path"], float(lab["start"]), float(lab["end"]))
              for lab in csv.DictReader(open(labels_csv))]
  for h in hybrid["results"]:      # nothing that shares audio with a label
    assert not any(f == h["file"] and h["offset"] < e and s < h["end"] for f, s, e in labelled)
