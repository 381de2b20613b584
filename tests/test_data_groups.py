"""data.group: carved splits and cross-validation folds never split a group (speaker, room,
instrument), so validation mirrors a test split of unseen groups."""

import collections
import os

import pytest

from jaxaudio.data.sources import list_source
from jaxaudio.runtime.errors import DataError
from datafixtures import data_config, write_class_folder

SPLITS = ("train", "validation", "test")


def _touch_layout(root, layout):
  """root/<class>/<class>__<group>__<n>.wav (listing never decodes, so empty files do)."""
  for label, groups in layout.items():
    os.makedirs(os.path.join(root, label), exist_ok=True)
    for group, count in groups.items():
      for n in range(count):
        open(os.path.join(root, label, f"{label}__{group}__{n}.wav"), "wb").close()
  return root


def _groups(listing):
  return {s: {c.group for c in listing.split(s)} for s in SPLITS}


def _assert_disjoint(listing):
  g = _groups(listing)
  assert not g["train"] & g["validation"] and not g["train"] & g["test"]
  assert not g["validation"] & g["test"]
  for c in listing.clips:   # the group is the one in the file name
    assert f"__{c.group}__" in os.path.basename(c.key)


def test_speakers_across_classes_are_carved_whole(tmp_path):
  # 20 speakers, each saying every word 3 times: the keyword-spotting layout.
  speakers = {f"spk{i:02d}": 3 for i in range(20)}
  root = _touch_layout(str(tmp_path / "kws"), {w: speakers for w in ("yes", "no", "up", "down")})
  cfg = data_config(tmp_path, f"folder:{root}", val_fraction=0.2, test_fraction=0.2,
                    group="regex:__([^_]+)__")
  listing = list_source(cfg)
  _assert_disjoint(listing)
  sizes = {s: len(listing.split(s)) for s in SPLITS}
  assert sizes == {"train": 144, "validation": 48, "test": 48}   # 4 speakers each, whole
  assert all(len({l for c in listing.split(s) for l in c.labels}) == 4 for s in SPLITS)
  assert [c.key for c in list_source(cfg).clips] == [c.key for c in listing.clips]  # seeded
  cfg.split_seed = 3
  assert _groups(list_source(cfg))["test"] != _groups(listing)["test"]


def test_groups_nested_in_classes_keep_every_class_in_train(tmp_path):
  # Instruments: each family (class) has its own programs (groups), of unequal sizes.
  layout = {f"family{f}": {f"f{f}p{p}": 2 + (p + f) % 4 for p in range(5)} for f in range(6)}
  root = _touch_layout(str(tmp_path / "inst"), layout)
  listing = list_source(data_config(tmp_path, f"folder:{root}", val_fraction=0.2,
                                    test_fraction=0.2, group="regex:__([^_]+)__"))
  _assert_disjoint(listing)
  train = collections.Counter(c.labels[0] for c in listing.split("train"))
  assert set(train) == set(layout)                       # no class lost from train
  for split in ("validation", "test"):
    assert len(listing.split(split)) == pytest.approx(0.2 * len(listing.clips), abs=8)
  # Without groups the same split scatters programs over train and validation.
  plain = list_source(data_config(tmp_path, f"folder:{root}", val_fraction=0.2,
                                  test_fraction=0.2))
  shared = ({c.key.split("__")[1] for c in plain.split("train")}
            & {c.key.split("__")[1] for c in plain.split("validation")})
  assert shared


def test_given_test_split_and_carved_validation(tmp_path):
  root = str(tmp_path / "data")
  _touch_layout(os.path.join(root, "train"), {c: {f"r{i}": 4 for i in range(6)}
                                              for c in ("a", "b", "c")})
  _touch_layout(os.path.join(root, "test"), {c: {"rtest": 3} for c in ("a", "b", "c")})
  listing = list_source(data_config(tmp_path, f"folder:{root}", val_fraction=0.2,
                                    group="regex:__([^_]+)__"))
  _assert_disjoint(listing)
  assert _groups(listing)["test"] == {"rtest"}
  # 0.2 of 6 groups: a fifth of them as whole groups (StratifiedGroupKFold, 5 folds of 6)
  assert len(_groups(listing)["validation"]) in (1, 2)
  assert len(listing.split("validation")) == 12 * len(_groups(listing)["validation"])


def test_csv_group_column_is_used_and_named_columns_work(tmp_path):
  root = tmp_path / "csvdata"
  root.mkdir()
  rows = ["path,label,speaker"]
  for i in range(40):
    name = f"clip{i}.wav"
    open(root / name, "wb").close()
    rows.append(f"{name},{'ab'[i % 2]},s{i // 4}")
  (root / "meta.csv").write_text("\n".join(rows) + "\n")
  listing = list_source(data_config(tmp_path, f"csv:{root / 'meta.csv'}", val_fraction=0.2,
                                    test_fraction=0.2, group="column:speaker"))
  _assert_groups_match_csv(listing, rows)
  (root / "meta.csv").write_text("\n".join(r.replace("speaker", "group", 1) if k == 0 else r
                                           for k, r in enumerate(rows)) + "\n")
  auto = list_source(data_config(tmp_path, f"csv:{root / 'meta.csv'}", val_fraction=0.2,
                                 test_fraction=0.2))   # a `group` column needs no setting
  assert [(c.key, c.split) for c in auto.clips] == [(c.key, c.split) for c in listing.clips]
  with pytest.raises(DataError, match="names column 'speaker', which the CSV lacks"):
    list_source(data_config(tmp_path, f"csv:{root / 'meta.csv'}", group="column:speaker"))


def _assert_groups_match_csv(listing, rows):
  speaker = {r.split(",")[0]: r.split(",")[2] for r in rows[1:]}
  assert all(c.group == speaker[c.key] for c in listing.clips)
  g = _groups(listing)
  assert not g["train"] & g["validation"] and not g["train"] & g["test"] and g["validation"]


def test_group_errors_are_one_sentence(tmp_path):
  root = _touch_layout(str(tmp_path / "d"), {"a": {"g1": 3, "g2": 3}, "b": {"g3": 6}})
  cfg = data_config(tmp_path, f"folder:{root}", val_fraction=0.3, test_fraction=0.0,
                    group="regex:__([^_]+)__")
  for rule, message in (("regex:__([^_]+)__", "class 'b' has its train clips in too few groups"),
                        ("regex:speaker(\\d+)", "does not match 'a/a__g1__0.wav'"),
                        ("speaker", "is not column:NAME or regex:PATTERN"),
                        ("regex:([", "is invalid"),
                        ("column:speaker", "needs a CSV source")):
    cfg.group = rule
    with pytest.raises(DataError, match=message):
      list_source(cfg)
  with pytest.raises(DataError, match="not demo"):
    list_source(data_config(tmp_path, "demo", group="regex:x"))


def test_cross_validation_folds_hold_whole_groups(tmp_path):
  speakers = {f"spk{i}": 2 for i in range(10)}
  root = _touch_layout(str(tmp_path / "cv"), {w: speakers for w in ("yes", "no", "go")})
  tested = collections.Counter()
  for fold in range(1, 6):
    listing = list_source(data_config(tmp_path, f"folder:{root}", cv_folds=5, cv_fold=fold,
                                      val_fraction=0.2, group="regex:__([^_]+)__"))
    _assert_disjoint(listing)
    tested.update(c.key for c in listing.split("test"))
  assert len(tested) == 60 and set(tested.values()) == {1}   # every clip tested exactly once


def test_report_lists_groups_per_split(tmp_path):
  from jaxaudio.data.prepare import prepare
  from jaxaudio.models.registry import AISFX_SPEC
  root = str(tmp_path / "audio")
  for spk in ("s1", "s2", "s3", "s4"):
    write_class_folder(os.path.join(root, "train"), per_class=1)
    for label in ("low", "mid", "high"):
      os.rename(os.path.join(root, "train", label, f"{label}_0.wav"),
                os.path.join(root, "train", label, f"{label}__{spk}__.wav"))
  write_class_folder(os.path.join(root, "test"), per_class=1)
  cfg = data_config(tmp_path, f"folder:{root}", val_fraction=0.25, group="regex:__(s\\d)__|(_0)")
  prepared, _ = prepare(cfg, AISFX_SPEC, progress=False)
  report = open(os.path.join(prepared.root, "report.md")).read()
  assert "## Groups (data.group)" in report and "| train | 3 | 3-3 |" in report
  assert "| validation | 1 | 3-3 |" in report and "No group of validation occurs in train." in report


def test_few_clips_per_class_still_carve_whole_groups(tmp_path):
  # 2 clips per class and speaker, 7 folds wanted: StratifiedGroupKFold cannot stratify.
  root = _touch_layout(str(tmp_path / "few"), {w: {f"spk{i}": 1 for i in range(4)}
                                              for w in ("yes", "no", "up")})
  listing = list_source(data_config(tmp_path, f"folder:{root}", val_fraction=0.15,
                                    test_fraction=0.15, group="regex:__([^_]+)__"))
  _assert_disjoint(listing)
  assert all(listing.split(s) for s in SPLITS)
