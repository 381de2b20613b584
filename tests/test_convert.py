"""`python -m jaxaudio.convert`, conversion errors, caching, and merging into a fresh model."""

import json

import jax
import numpy as np
import pytest

from jaxaudio.audio import melfilters
from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.models.head import EmbeddingClassifier
from jaxaudio.models.init import init_variables
from jaxaudio.models.registry import get_model
from jaxaudio.weights import convert, merge, store
from pth_writer import save_pth
from test_model_parity import torch_layout_random_weights


def panns_checkpoint(path, arch="cnn6", sample_rate=32000, seed=7):
  """A file laid out like the official PANNs checkpoints: {'model': state_dict, ...}."""
  info = get_model(f"panns_{arch}")
  state = torch_layout_random_weights(info, seed)
  for key in [k for k in state if k.endswith("running_var")]:
    state[key.replace("running_var", "num_batches_tracked")] = np.array(1000, np.int64)
  fmax = min(14000.0, sample_rate / 2)             # as PANNs' 16 kHz models are built
  state["logmel_extractor.melW"] = melfilters.slaney(sample_rate, 1024, 64, 50.0, fmax
                                                     ).T.astype(np.float32)
  state["spectrogram_extractor.stft.conv_real.weight"] = np.zeros((513, 1, 1024), np.float32)
  save_pth({"model": state, "sampler": {"x": 1}, "iteration": 100}, path)
  return state


def test_convert_cli_aisfx_twice_is_identical(cli, tmp_path, aisfx_checkpoint):
  del aisfx_checkpoint  # ensures the original is cached before the CLI looks for it
  runs = [cli("jaxaudio.convert", "--model=aisfx", f"--out={tmp_path / name}")
          for name in ("a", "b")]
  for r in runs:
    assert r.returncode == 0, r.stderr
  meta = json.loads(runs[0].stdout.strip().splitlines()[-1])
  assert meta["source_sha256"].startswith("499ea759") and meta["param_count"] == 4_686_144
  (va, ma), (vb, _) = store.load_converted(tmp_path / "a"), store.load_converted(tmp_path / "b")
  assert ma["frontend_spec"] == get_model("aisfx").spec.to_dict()
  leaves_a, leaves_b = jax.tree_util.tree_leaves(va), jax.tree_util.tree_leaves(vb)
  assert len(leaves_a) == len(leaves_b) == 40  # 8 convs x (kernel, scale, bias, mean, var)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_convert_cli_panns_checkpoint(cli, tmp_path):
  state = panns_checkpoint(tmp_path / "Cnn6.pth")
  r = cli("jaxaudio.convert", "--model=panns_cnn6", f"--checkpoint={tmp_path / 'Cnn6.pth'}",
          f"--out={tmp_path / 'out'}")
  assert r.returncode == 0, r.stderr
  variables, meta = store.load_converted(tmp_path / "out")
  assert meta["model"] == "panns_cnn6"
  np.testing.assert_array_equal(variables["params"]["block2"]["conv1"]["kernel"],
                                state["conv_block2.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc1"]["kernel"], state["fc1.weight"].T)
  np.testing.assert_array_equal(variables["batch_stats"]["bn0"]["var"], state["bn0.running_var"])


def _one_error_line(result):
  assert result.returncode == 2, (result.stdout, result.stderr)
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


def test_cli_bad_inputs_are_one_sentence(cli, tmp_path):
  panns_checkpoint(tmp_path / "Cnn6.pth")
  data = (tmp_path / "Cnn6.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
  out = f"--out={tmp_path / 'out'}"
  msg = _one_error_line(cli("jaxaudio.convert", "--model=aisfxx", out))
  assert "unknown model 'aisfxx'" in msg and "did you mean 'aisfx'" in msg
  msg = _one_error_line(cli("jaxaudio.convert", "--model=panns_cnn6",
                            f"--checkpoint={tmp_path / 'missing.pth'}", out))
  assert "no such checkpoint file" in msg
  msg = _one_error_line(cli("jaxaudio.convert", "--model=panns_cnn6",
                            f"--checkpoint={tmp_path / 'cut.pth'}", out))
  assert "truncated" in msg
  msg = _one_error_line(cli("jaxaudio.convert", "--model=panns_cnn14",
                            f"--checkpoint={tmp_path / 'Cnn6.pth'}", out))
  assert "is not a panns_cnn14 checkpoint" in msg and "--model=panns_cnn6" in msg
  msg = _one_error_line(cli("jaxaudio.convert", "--model=panns_cnn14", out))
  assert "needs --checkpoint" in msg


def test_wrong_frontend_checkpoint_is_refused(tmp_path):
  from jaxaudio.weights.pretrained import convert_file
  panns_checkpoint(tmp_path / "Cnn6_16k.pth", sample_rate=16000)
  with pytest.raises(CheckpointError, match="mel filterbank"):
    convert_file(get_model("panns_cnn6"), str(tmp_path / "Cnn6_16k.pth"))


def test_merge_keeps_fresh_head_and_drops_audioset_head():
  info = get_model("panns_cnn6")
  pretrained = convert.convert_state_dict(info, torch_layout_random_weights(info, 3))
  model = EmbeddingClassifier(info.build(pretrained_head=False), num_classes=5)
  fresh = init_variables(model, jax.random.PRNGKey(0), np.zeros((1, 200, 64), np.float32))
  merged = merge.merge_pretrained(fresh, pretrained, info)
  np.testing.assert_array_equal(merged["params"]["head"]["kernel"],
                                fresh["params"]["head"]["kernel"])
  np.testing.assert_array_equal(merged["params"]["backbone"]["block3"]["conv1"]["kernel"],
                                pretrained["params"]["block3"]["conv1"]["kernel"])
  np.testing.assert_array_equal(merged["batch_stats"]["backbone"]["bn0"]["mean"],
                                pretrained["batch_stats"]["bn0"]["mean"])
  assert "fc_audioset" not in merged["params"]["backbone"]


def test_merge_lists_every_mismatch():
  info = get_model("aisfx")
  tiny = EmbeddingClassifier(info.build(widths=(4, 8, 8, 16)), num_classes=3)
  fresh = init_variables(tiny, jax.random.PRNGKey(0), np.zeros((1, 100, 96), np.float32))
  pretrained = jax.tree_util.tree_map(np.asarray, info.init_variables())
  pretrained["params"]["extra"] = {"kernel": np.zeros(3)}
  del pretrained["params"]["block4"]["conv2"]
  with pytest.raises(CheckpointError) as err:
    merge.merge_pretrained(fresh, pretrained, info)
  msg = str(err.value)
  assert "missing: params/backbone/block4/conv2/kernel" in msg
  assert "unexpected: params/backbone/extra/kernel" in msg
  assert "wrong shape: batch_stats/backbone/block1/bn1/mean (64,) vs (4,)" in msg
