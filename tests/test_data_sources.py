"""Listing and validating sources: folder, CSV (incl. ESC-50), TFDS (mocked) and demo."""

import collections
import csv
import os

import numpy as np
import pytest

from jaxaudio.data import demo
from jaxaudio.data.sources import list_source
from jaxaudio.runtime.errors import DataError
from datafixtures import data_config, write_class_folder


def _counts(listing):
  return {s: sorted({l for c in listing.split(s) for l in c.labels}) for s in
          ("train", "validation", "test")}


def test_folder_without_splits_is_split_stratified_and_seeded(tmp_path):
  root = write_class_folder(str(tmp_path / "clips"), per_class=10)
  cfg = data_config(tmp_path, f"folder:{root}", val_fraction=0.2, test_fraction=0.2)
  a, b = list_source(cfg), list_source(cfg)
  assert [c.key for c in a.clips] == [c.key for c in b.clips]
  assert {s: len(a.split(s)) for s in ("train", "validation", "test")} == {
      "train": 18, "validation": 6, "test": 6}
  assert all(v == ["high", "low", "mid"] for v in _counts(a).values())  # every class everywhere
  cfg.split_seed = 1
  assert ({c.key: c.split for c in list_source(cfg).clips} !=
          {c.key: c.split for c in a.clips})
  assert not a.multi_label and a.classes == ("high", "low", "mid")


def test_folder_with_some_splits_carves_the_missing_one(tmp_path):
  root = write_class_folder(str(tmp_path / "clips"), splits={"train": 6, "test": 2})
  listing = list_source(data_config(tmp_path, f"folder:{root}", val_fraction=0.2))
  assert len(listing.split("test")) == 6 and all("/test/" in c.path for c in listing.split("test"))
  assert len(listing.split("validation")) == 3   # one of each class's six train clips


def test_folder_errors_are_one_sentence(tmp_path):
  root = write_class_folder(str(tmp_path / "clips"), splits={"train": 3, "test": 1})
  os.makedirs(os.path.join(root, "train", "empty_class"))
  with pytest.raises(DataError, match=r"class folder .*empty_class holds no audio files"):
    list_source(data_config(tmp_path, f"folder:{root}"))
  os.rmdir(os.path.join(root, "train", "empty_class"))
  os.makedirs(os.path.join(root, "test", "unseen"))
  write_class_folder(os.path.join(root, "test"), classes=("unseen",), per_class=1)
  with pytest.raises(DataError, match=r"label\(s\) \['unseen'\] appear in test but never in train"):
    list_source(data_config(tmp_path, f"folder:{root}"))
  with pytest.raises(DataError, match="no such folder"):
    list_source(data_config(tmp_path, f"folder:{tmp_path / 'nope'}"))


def test_split_with_no_files(tmp_path):
  root = write_class_folder(str(tmp_path / "clips"), splits={"train": 3, "test": 1})
  with pytest.raises(DataError, match="the validation split has no clips"):
    list_source(data_config(tmp_path, f"folder:{root}", val_fraction=0.0))


def test_csv_with_split_column_and_multi_label(tmp_path):
  write_class_folder(str(tmp_path / "clips"), per_class=4)
  rows = []
  for cls in ("low", "mid", "high"):
    for j in range(4):
      split = ["train", "train", "val", "test"][j]
      label = cls if j % 2 else f"{cls};tonal"
      rows.append({"path": f"{cls}/{cls}_{j}.wav", "label": label, "split": split})
  with open(tmp_path / "clips" / "labels.csv", "w", newline="") as f:
    w = csv.DictWriter(f, ["path", "label", "split"])
    w.writeheader()
    w.writerows(rows)
  listing = list_source(data_config(tmp_path, f"csv:{tmp_path / 'clips' / 'labels.csv'}"))
  assert listing.multi_label and listing.classes == ("high", "low", "mid", "tonal")
  assert len(listing.split("validation")) == 3 and len(listing.split("test")) == 3
  assert all(os.path.isfile(c.path) for c in listing.clips)
  first = listing.split("train")[0]
  assert first.labels == ("high", "tonal")


def write_esc50(root, folds=5, per_fold=2, classes=("dog", "rain", "siren")):
  os.makedirs(os.path.join(root, "meta"))
  os.makedirs(os.path.join(root, "audio"))
  from datafixtures import tone, SR
  import soundfile as sf
  with open(os.path.join(root, "meta", "esc50.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    for fold in range(1, folds + 1):
      for t, c in enumerate(classes):
        for k in range(per_fold):
          name = f"{fold}-{100 + t}{k}-A-{t}.wav"
          sf.write(os.path.join(root, "audio", name), tone(300 * (t + 1), 0.6, seed=k), SR)
          w.writerow([name, fold, t, c, "False", f"{100 + t}{k}", "A"])
  return os.path.join(root, "meta", "esc50.csv")


def test_esc50_csv_as_it_is_with_fold_choice(tmp_path):
  meta = write_esc50(str(tmp_path / "ESC-50"))
  listing = list_source(data_config(tmp_path, f"csv:{meta}"))
  assert {c.split for c in listing.clips if c.key.startswith("5-")} == {"test"}
  assert {c.split for c in listing.clips if c.key.startswith("4-")} == {"validation"}
  assert len(listing.split("train")) == 18 and listing.classes == ("dog", "rain", "siren")
  assert all(c.path.endswith(os.path.join("audio", c.key)) for c in listing.clips)
  cfg = data_config(tmp_path, f"csv:{meta}", test_folds=(1,), validation_folds=(2,))
  assert {c.split for c in list_source(cfg).clips if c.key.startswith("1-")} == {"test"}
  with pytest.raises(DataError, match=r"folds \[9\]"):
    list_source(data_config(tmp_path, f"csv:{meta}", test_folds=(9,)))


def test_cross_validation_folds_from_esc50_fold_column(tmp_path):
  meta = write_esc50(str(tmp_path / "ESC-50"))
  tested = []
  for fold in range(1, 6):
    listing = list_source(data_config(tmp_path, f"csv:{meta}", cv_folds=5, cv_fold=fold,
                                      val_fraction=0.25))
    test = {c.key for c in listing.split("test")}
    assert test == {c.key for c in listing.clips if c.key.startswith(f"{fold}-")}
    assert len(listing.split("validation")) == 6 and len(listing.split("train")) == 18
    tested += sorted(test)
  assert len(tested) == len(set(tested)) == 30       # every clip is tested exactly once
  with pytest.raises(DataError, match=r"defines 5 folds \[1, 2, 3, 4, 5\] .* pass --folds=5"):
    list_source(data_config(tmp_path, f"csv:{meta}", cv_folds=4, cv_fold=1))


def test_cross_validation_folds_of_a_folder_are_stratified_and_cover_every_clip(tmp_path):
  root = write_class_folder(str(tmp_path / "clips"), per_class=7,
                            splits={"train": 5, "test": 2})   # existing splits are pooled
  seen = collections.Counter()
  for fold in (1, 2, 3):
    listing = list_source(data_config(tmp_path, f"folder:{root}", cv_folds=3, cv_fold=fold))
    per_class = collections.Counter(c.labels[0] for c in listing.split("test"))
    assert set(per_class.values()) <= {2, 3} and len(per_class) == 3, per_class  # 7 = 3+2+2
    keys = [{c.key for c in listing.split(s)} for s in ("train", "validation", "test")]
    assert not (keys[0] & keys[2] or keys[1] & keys[2] or keys[0] & keys[1])
    assert sum(map(len, keys)) == 21
    seen.update(keys[2])
    again = list_source(data_config(tmp_path, f"folder:{root}", cv_folds=3, cv_fold=fold))
    assert [c.split for c in again.clips] == [c.split for c in listing.clips]   # seeded
  assert len(seen) == 21 and set(seen.values()) == {1}


def test_csv_bad_header(tmp_path):
  (tmp_path / "x.csv").write_text("name,kind\na.wav,dog\n")
  with pytest.raises(DataError, match="needs a path column"):
    list_source(data_config(tmp_path, f"csv:{tmp_path / 'x.csv'}"))


def test_unknown_source_kind(tmp_path):
  with pytest.raises(DataError, match="is not one of folder:PATH"):
    list_source(data_config(tmp_path, "s3://bucket"))


def test_tfds_catalog_dataset_with_mock_data(tmp_path, monkeypatch):
  import tensorflow as tf
  import tensorflow_datasets as tfds

  def fake_as_dataset(self, split, *args, **kwargs):   # deterministic 8 kHz tones
    del self, split, args, kwargs
    waves = [(8000 * np.sin(2 * np.pi * (200 + 150 * (i % 3)) * np.arange(4000 + 100 * i) / 8000)
              ).astype(np.int64) for i in range(9)]
    return tf.data.Dataset.from_generator(
        lambda: ({"audio": w, "label": np.int64(i % 3), "audio/filename": b"f"}
                 for i, w in enumerate(waves)),
        output_signature={"audio": tf.TensorSpec([None], tf.int64),
                          "label": tf.TensorSpec([], tf.int64),
                          "audio/filename": tf.TensorSpec([], tf.string)})

  from jaxaudio.data import prepare as prep
  from jaxaudio.models.registry import AISFX_SPEC
  cfg = data_config(tmp_path, "tfds:spoken_digit")
  cfg.tfds.splits = {"train": "train[:70%]", "validation": "train[70%:85%]",
                     "test": "train[85%:]"}
  with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset):
    listing = list_source(cfg)
    # mock_data also stubs every builder's download_and_prepare, our writer's too: read the
    # examples through the real TFDS path here, write them after the mock is gone.
    tasks = {s: list(prep.featurize_tasks(listing, s)) for s in ("train", "validation", "test")}
    cfg.tfds.audio_key = "waveform"
    with pytest.raises(DataError, match="has no feature 'waveform'"):
      list_source(cfg)
  assert listing.tfds["sample_rate"] == 8000 and listing.classes[:3] == ("0", "1", "2")
  assert [c.labels for c in listing.split("train")[:4]] == [("0",), ("1",), ("2",), ("0",)]
  assert tasks["train"][1][2].dtype == np.int64 and tasks["train"][1][3] == 8000
  monkeypatch.setattr(prep, "featurize_tasks", lambda listing, split: iter(tasks[split]))
  monkeypatch.setattr(prep, "list_source", lambda cfg: listing)
  prepared, built = prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert built and prepared.num_windows("train") == 9   # 0.5-0.6 s clips -> one window each
  rec = prepared.data_source("train")[1]
  assert rec["label"] == 1 and rec["mel"].shape == (100, 96) and rec["mel"].max() > 0.3


def test_a_real_tfds_dataset_on_disk_gives_the_features_of_the_same_audio_as_files(tmp_path):
  """A tiny TFDS dataset written to a data_dir (Audio at 8 kHz, ClassLabel; train, validation,
  test), read by tfds:NAME through the real catalog lookup, load and decode, untouched; its
  prepared windows equal those of the same waveforms written as WAV files (folder source)."""
  import soundfile as sf
  import tensorflow_datasets as tfds
  from jaxaudio.data import prepare as prep
  from jaxaudio.models.registry import AISFX_SPEC
  classes = ("low", "mid", "high")
  splits = {"train": 2, "validation": 1, "test": 1}

  def wave(c, i, split):
    seed = 10 * classes.index(c) + i + 100 * list(splits).index(split)
    t = np.arange(6000 + 400 * i) / 8000
    noise = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.5 * np.sin(2 * np.pi * 200 * (classes.index(c) + 1) * t) + noise) * 2 ** 15 * 0.9

  examples = {s: [{"audio": wave(c, i, s).astype(np.int16), "label": c}
                  for i in range(n) for c in classes] for s, n in splits.items()}
  features = tfds.features.FeaturesDict({
      "audio": tfds.features.Audio(sample_rate=8000, dtype=np.int16),
      "label": tfds.features.ClassLabel(names=list(classes))})
  tfds.dataset_builders.store_as_tfds_dataset(
      name="jaxaudio_tiny_tones", version="1.0.0", features=features,
      split_datasets={s: iter(enumerate(rows)) for s, rows in examples.items()},
      data_dir=str(tmp_path / "tfds"), disable_shuffling=True)
  folder = tmp_path / "files"
  for s, rows in examples.items():
    for j, ex in enumerate(rows):
      d = folder / s / ex["label"]
      os.makedirs(d, exist_ok=True)
      sf.write(str(d / f"{j}.wav"), ex["audio"], 8000, subtype="PCM_16")

  cfg = data_config(tmp_path / "t", "tfds:jaxaudio_tiny_tones")
  cfg.tfds.data_dir = str(tmp_path / "tfds")
  listing = list_source(cfg)
  assert listing.tfds["sample_rate"] == 8000 and sorted(listing.classes) == sorted(classes)
  assert [len(listing.split(s)) for s in splits] == [6, 3, 3]
  from_tfds, built = prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert built
  from_files, _ = prep.prepare(data_config(tmp_path / "f", f"folder:{folder}"), AISFX_SPEC,
                               progress=False)
  for s in splits:
    a, b = from_tfds.data_source(s), from_files.data_source(s)
    assert len(a) == len(b) == len(examples[s])   # one window per 0.75-0.85 s clip
    by_label = {}
    for r in (b[i] for i in range(len(b))):
      by_label.setdefault(from_files.classes[int(r["label"])], []).append(r["mel"])
    for r in (a[i] for i in range(len(a))):
      label = from_tfds.classes[int(r["label"])]
      assert r["mel"].shape == (100, 96) and r["mel"].max() > 0.3
      assert any(np.array_equal(r["mel"], m) for m in by_label[label]), (s, label)


def test_demo_is_deterministic_and_sound_like(tmp_path):
  a = demo.demo_dir(str(tmp_path / "a"), 3, {"train": 2, "test": 1}, 1.0, 16000)
  b = demo.demo_dir(str(tmp_path / "b"), 3, {"train": 2, "test": 1}, 1.0, 16000)
  files = sorted(os.path.relpath(os.path.join(r, f), a) for r, _, fs in os.walk(a) for f in fs
                 if f.endswith(".wav"))
  assert len(files) == 3 * len(demo.CLASSES) >= 24
  for f in files:
    assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read()
  import soundfile as sf
  levels = [np.max(np.abs(sf.read(os.path.join(a, f))[0])) for f in files]
  assert 0.02 < min(levels) and max(levels) < 0.6     # random level, never clipped
