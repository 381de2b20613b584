"""The torch-free .pth reader: exact tensors, both formats, and refusal of hostile files."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.weights.pth import load_pth
from conftest import GOLDEN


@pytest.mark.parametrize("name", ["tiny_zip.pth", "tiny_legacy.pth"])
def test_reads_torch_saved_files_exactly(golden, name):
  obj = load_pth(os.path.join(GOLDEN, name))       # written by torch.save in make_golden.py
  expected = golden("tiny_expected.npz")
  assert obj["epoch"] == 3 and obj["meta"] == ("x", 1.5)
  assert set(obj["model"]) == set(expected.files)
  for key in expected.files:
    got = obj["model"][key]
    assert got.dtype == expected[key].dtype and got.shape == expected[key].shape, key
    np.testing.assert_array_equal(got, expected[key])


def test_reads_real_aisfx_checkpoint(aisfx_checkpoint):
  state, datasets = load_pth(aisfx_checkpoint)
  assert len(state) == 102
  assert state["embedding_net.conv_block4.conv2.weight"].shape == (512, 512, 3, 3)
  assert datasets["prosfx"] == (0, 78)              # numpy scalars rebuilt safely


def _hostile(path, marker):
  payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
    zf.writestr("archive/version", "3\n")
  return payload


def test_refuses_code_that_plain_pickle_would_run(tmp_path):
  marker = tmp_path / "pwned"
  payload = _hostile(tmp_path / "evil.pth", marker)
  with pytest.raises(CheckpointError, match=r"refused to load global 'os\.system'"):
    load_pth(tmp_path / "evil.pth")
  assert not marker.exists()
  pickle.loads(payload)  # the same bytes under plain pickle do run the command
  assert marker.exists()


def test_refuses_object_dtype(tmp_path):
  payload = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R."
  with zipfile.ZipFile(tmp_path / "obj.pth", "w") as zf:
    zf.writestr("archive/data.pkl", payload)
  with pytest.raises(CheckpointError, match="object dtype"):
    load_pth(tmp_path / "obj.pth")


@pytest.mark.parametrize("name", ["tiny_zip.pth", "tiny_legacy.pth"])
def test_truncated_file_is_one_clear_error(tmp_path, name):
  data = open(os.path.join(GOLDEN, name), "rb").read()
  cut = tmp_path / name
  cut.write_bytes(data[: len(data) * 2 // 3])
  with pytest.raises(CheckpointError, match="truncated"):
    load_pth(cut)


def test_missing_and_non_checkpoint_files(tmp_path):
  with pytest.raises(CheckpointError, match="no such checkpoint file"):
    load_pth(tmp_path / "nope.pth")
  (tmp_path / "text.pth").write_text("hello, not a checkpoint\n")
  with pytest.raises(CheckpointError, match=str(tmp_path / "text.pth")):
    load_pth(tmp_path / "text.pth")
