"""`python -m jaxaudio.prepare --runner=DirectRunner ...`: the clips featurized by two Beam
worker processes give the plain builder's dataset: the same array_record files record for
record (each record's canonical bytes), meta.json byte for byte, the report but for its
timings, bad files skipped alike; a TFDS source and options Beam refuses are one sentence."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from array_record.python import array_record_module
from tensorflow.core.example import example_pb2

from datafixtures import SR, data_config, tone, write_class_folder
from jaxaudio.audio import featurize
from jaxaudio.data import beam_prepare
from jaxaudio.data import prepare as prep
from jaxaudio.data.listing import SPLITS
from jaxaudio.data.sources import list_source
from jaxaudio.models.registry import AISFX_SPEC
from jaxaudio.runtime.errors import DataError, JaxAudioError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEAM = ["--runner=DirectRunner", "--direct_num_workers=2",
        "--direct_running_mode=multi_processing"]


def _files(root):
  """{relative path: content} of a prepared dataset: each array_record file as its records,
  each record canonically serialized (a tf.train.Example's feature map comes out of protobuf
  in an order that differs from process to process, so two runs of the same builder differ
  in bytes but not in a single parsed bit), and meta.json as bytes."""
  out = {}
  for path in glob.glob(os.path.join(root, "tfds", "**", "*.array_record*"), recursive=True):
    reader = array_record_module.ArrayRecordReader(path)
    out[os.path.relpath(path, root)] = [
        example_pb2.Example.FromString(r).SerializeToString(deterministic=True)
        for r in reader.read_all()]
    reader.close()
  out["meta.json"] = open(os.path.join(root, "meta.json"), "rb").read()
  return out


def _report(root):
  r = json.load(open(os.path.join(root, "report.json")))
  return {k: v for k, v in r.items() if k not in ("seconds", "files_per_second")}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  """Three classes of tones of several lengths (some several windows long), plus files that
  must be skipped in the middle of the listing: skips shift every later clip's number."""
  root = write_class_folder(str(tmp_path_factory.mktemp("beamclips")), per_class=7,
                            seconds=2.5)
  d = os.path.join(root, "low")
  open(os.path.join(d, "empty.wav"), "wb").close()
  sf.write(os.path.join(d, "long.wav"), tone(200, 7.0), SR)
  nan = tone(300, 1.0)
  nan[100] = np.nan
  sf.write(os.path.join(d, "nan.wav"), nan, SR, subtype="FLOAT")
  return root


def _prepare(tmp_path, clips, name, *extra):
  flags = ["--config=configs/folder.py", f"--config.data.source=folder:{clips}",
           f"--config.data.prepared_dir={tmp_path / name}", "--config.data.val_fraction=0.2",
           "--config.data.test_fraction=0.2", "--config.data.workers=1"]
  r = subprocess.run([sys.executable, "-m", "jaxaudio.prepare", *flags, *extra],
                     capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["built"] and out["skipped_files"] == 2
  return out, r.stdout + r.stderr


def test_prepare_on_beam_with_two_workers_writes_the_plain_builders_bytes(tmp_path, clips):
  # the plain build in this process: configs/folder.py's data section, as the command has it
  built, _ = prep.prepare(data_config(tmp_path / "plain", f"folder:{clips}", denoise=0.0,
                                      val_fraction=0.2, test_fraction=0.2),
                          AISFX_SPEC, progress=False)
  plain = {"prepared": built.root}
  out, console = _prepare(tmp_path, clips, "beam", *BEAM)
  assert "on DirectRunner" in console
  beam_root = out["prepared"]
  assert os.path.basename(beam_root) == os.path.basename(plain["prepared"])   # same cache key
  want, got = _files(plain["prepared"]), _files(beam_root)
  assert sorted(got) == sorted(want) and len(want) >= 4      # 3 splits' records + meta.json
  for name, data in want.items():
    assert got[name] == data, name
  for name in want:   # and the files themselves are as long (same shards, same records)
    if name != "meta.json":
      assert os.path.getsize(os.path.join(beam_root, name)) == os.path.getsize(
          os.path.join(plain["prepared"], name))
  assert _report(beam_root) == _report(plain["prepared"])
  assert not os.path.exists(os.path.join(beam_root, "beam"))   # the shards' files are gone
  # several shards per split, so the driver really stitched them back in order
  listing = list_source(data_config(tmp_path / "x", f"folder:{clips}", val_fraction=0.2,
                                         test_fraction=0.2))
  shards = beam_prepare.plan_shards(
      {s: list(prep.featurize_tasks(listing, s)) for s in SPLITS}, 2)
  assert sum(s.name.startswith("train-") for s in shards) >= 3


def test_a_shard_file_reads_back_as_the_results_written(tmp_path, clips):
  listing = list_source(data_config(tmp_path, f"folder:{clips}"))
  tasks = list(prep.featurize_tasks(listing, "train"))[:6]
  settings = prep.settings_from_config(data_config(tmp_path, f"folder:{clips}"))
  spec = AISFX_SPEC.to_dict()
  results = [featurize.featurize(t[0], spec, settings, path=t[1]) for t in tasks]
  path = str(tmp_path / "s.npz")
  beam_prepare.write_shard(path, results)
  back = list(beam_prepare.read_shard(path))
  assert [b.index for b in back] == [r.index for r in results]
  for a, b in zip(results, back):
    assert a.error == b.error and a.seconds == b.seconds and a.source_rate == b.source_rate
    if not a.error:
      assert a.windows.dtype == b.windows.dtype and a.offsets.dtype == b.offsets.dtype
      np.testing.assert_array_equal(a.windows, b.windows)
      np.testing.assert_array_equal(a.offsets, b.offsets)


def test_beam_refusals_are_one_sentence(tmp_path, clips):
  cfg = data_config(tmp_path, f"folder:{clips}")
  with pytest.raises(JaxAudioError, match="Beam refuses the pipeline options"):
    prep.prepare(cfg, AISFX_SPEC, progress=False,
                 pipeline_args=["--runner=DirectRunner", "--direct_num_workers=two"])
  listing = list_source(cfg)
  listing.tfds = {"name": "speech_commands"}
  with pytest.raises(DataError, match="prepare a TFDS source without --runner"):
    beam_prepare.featurize_on_beam(listing, {}, AISFX_SPEC.to_dict(),
                                   prep.settings_from_config(cfg), None,
                                   ["--runner=DirectRunner"], str(tmp_path / "w"), False)
  assert not any(prep.is_complete(str(p)) for p in (tmp_path / "prepared").glob("*"))
