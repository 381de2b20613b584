"""musicnn / vgg against the original stored TF graphs (tests/golden/make_golden_musicnn.py)."""

import os

import jax
import numpy as np
import pytest

from jaxaudio.audio import frontend
from jaxaudio.audio.io import load_audio
from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.models import musicnn
from jaxaudio.models.registry import MUSICNN_SPEC, get_model, param_count
from jaxaudio.weights import convert, sources, tfckpt
from jaxaudio.weights.pretrained import convert_file
from conftest import GOLDEN

MODELS = {"musicnn_mtt": "MTT_musicnn", "musicnn_msd": "MSD_musicnn", "vgg_mtt": "MTT_vgg",
          "vgg_msd": "MSD_vgg"}


def _close(ours, ref, tol=1e-5):
  """Within tol relative to the reference's scale (float32 TF vs float32 XLA)."""
  scale = max(1.0, float(np.abs(ref).max()))
  return float(np.abs(np.asarray(ours) - ref).max()) <= tol * scale


def test_frontend_matches_librosa_with_float32_log(golden):
  ref = golden("musicnn_frontend.npz")
  ours = frontend.log_mel(load_audio(os.path.join(GOLDEN, "audio", "music_16k.flac"), 16000),
                          MUSICNN_SPEC)
  assert ours.shape == ref["music_16k"].shape == (438, 96)   # 1 + 112000 // 256 frames
  assert np.abs(ours - ref["music_16k"]).max() < 1e-5
  # The package's float16 log overflows on this file's loud ending; ours stays finite.
  assert int(ref["float16_infs"]) > 0 and np.isfinite(ours).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_models_match_original_graphs(golden, musicnn_checkpoint, name):
  ref = golden("musicnn_models.npz")
  info = get_model(name)
  variables = convert_file(info, musicnn_checkpoint(MODELS[name]))
  out, state = info.build().apply(variables, ref["inputs"], train=False,
                                  capture_intermediates=True)
  assert _close(out["embedding"], ref[f"{name}/embedding"])
  assert _close(jax.nn.sigmoid(out["tag_logits"]), ref[f"{name}/taggram"])
  assert out["embedding"].shape[1] == info.embedding_dim
  assert len(info.tag_names) == out["tag_logits"].shape[1] == 50
  if name.startswith("musicnn"):
    mid = np.asarray(state["intermediates"]["midend"]["__call__"][0])   # [B, T, 753]
    assert _close(mid.max(axis=1), ref[f"{name}/max_pool"])
    assert _close(mid.mean(axis=1), ref[f"{name}/mean_pool"])
    assert param_count(variables["params"]) == 787_159
  else:
    assert param_count(variables["params"]) == 605_748


def test_msd_vgg_pools_as_its_stored_graph_not_as_models_py(golden, musicnn_checkpoint):
  """MSD_vgg's weights also fit the MTT pooling (shapes coincide after pool2), which is what
  the package's models.py builds; only the stored graph's pooling reproduces its outputs."""
  ref = golden("musicnn_models.npz")
  variables = convert_file(get_model("vgg_msd"), musicnn_checkpoint("MSD_vgg"))
  wrong = musicnn.Vgg(pools=musicnn.VGG_POOLS["mtt"]).apply(variables, ref["inputs"])
  assert not _close(wrong["embedding"], ref["vgg_msd/embedding"], tol=1e-2)


def test_tf_conversion_errors_name_the_fix(tmp_path, musicnn_checkpoint):
  state = tfckpt.read_variables(musicnn_checkpoint("MTT_vgg"))
  assert any(k.endswith("/Adam") for k in state)                   # optimizer slots ignored
  with pytest.raises(CheckpointError, match=r"is not a musicnn_mtt checkpoint.*"
                     r"it matches --model=vgg_m"):
    convert.convert_state_dict(get_model("musicnn_mtt"), state, "MTT_vgg")
  with pytest.raises(CheckpointError, match="no TensorFlow checkpoint here"):
    tfckpt.read_variables(str(tmp_path))


def test_musicnn_sources_refetch_a_tampered_cache(tmp_path, monkeypatch, musicnn_checkpoint):
  """A cached copy whose weights fail the sha256 check is fetched again, never used."""
  good = musicnn_checkpoint("MTT_vgg")
  assert sources.tf_checkpoint_sha256(good) == sources.MUSICNN_SHA256["MTT_vgg"]
  monkeypatch.setenv("JAXAUDIO_CACHE", str(tmp_path))
  bad = tmp_path / "originals" / "musicnn-0.1.0" / "MTT_vgg"
  bad.mkdir(parents=True)
  for name in os.listdir(good):
    (bad / name).write_bytes(b"tampered")
  folder = sources.musicnn_checkpoint("MTT_vgg")
  assert folder == str(bad)
  assert sources.tf_checkpoint_sha256(folder) == sources.MUSICNN_SHA256["MTT_vgg"]
  assert os.path.isfile(tmp_path / "originals" / "musicnn-0.1.0" / "LICENSE.md")


@pytest.mark.parametrize("name", ["aisfx", "panns_cnn10", "musicnn_msd", "vgg_mtt"])
def test_default_recipe_freezes_each_models_first_groups(name):
  """The default param_groups freeze exactly the model's default_frozen layer groups."""
  from jaxaudio.runs import configs
  from jaxaudio.models.head import EmbeddingClassifier
  from jaxaudio.models.registry import finetune_backbone
  from jaxaudio.train import optimizer
  info = get_model(name)
  model = EmbeddingClassifier(finetune_backbone(info), num_classes=3)
  x = jax.ShapeDtypeStruct((1, info.spec.frames_per_window, info.spec.n_mels), np.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
  groups = optimizer.assign_groups(params, configs.base_config().train.param_groups)
  frozen = optimizer.frozen_layer_groups(params, groups, info.layer_groups)
  assert frozen == info.default_frozen
  assert "tags" not in params["backbone"] and "fc_audioset" not in params["backbone"]


def test_musicnn_fine_tunes_with_its_frontend_frozen_and_exports(tmp_path, musicnn_checkpoint):
  """A musicnn run end to end: default freezing keeps the front end bitwise pretrained while
  the mid end trains, and the exported model reproduces the run's embeddings."""
  from datafixtures import write_class_folder
  from jaxaudio.runs import configs, rundir
  from jaxaudio.workflows import finetune
  from jaxaudio.inference import exported
  from jaxaudio.exports import stablehlo
  from jaxaudio.weights.pretrained import pretrained_variables
  musicnn_checkpoint("MTT_musicnn")
  clips = write_class_folder(str(tmp_path / "clips"), per_class=6, seconds=3.2)
  cfg = configs.base_config()
  cfg.model.name = "musicnn_mtt"
  cfg.data.source, cfg.data.prepared_dir = f"folder:{clips}", str(tmp_path / "prepared")
  cfg.data.workers = 1
  cfg.train.update(num_steps=4, eval_every=2, log_every=2, batch_size=4, logmel_images=0)
  cfg.evaluate.at_end = False
  workdir = str(tmp_path / "run")
  finetune.run(cfg, workdir)
  run = rundir.open_run(workdir, "latest")
  pretrained = pretrained_variables(get_model("musicnn_mtt"))[0]
  tuned = run.variables["params"]["backbone"]
  for a, b in zip(jax.tree_util.tree_leaves(tuned["frontend"]),
                  jax.tree_util.tree_leaves(pretrained["params"]["frontend"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(
      jax.tree_util.tree_leaves(tuned["midend"]),
      jax.tree_util.tree_leaves(pretrained["params"]["midend"])))
  stablehlo.export_run(workdir, str(tmp_path / "export"), step="latest")
  model = exported.load(str(tmp_path / "export"))
  x = np.random.default_rng(0).uniform(0, 3, (2, 187, 96)).astype(np.float32)
  want = run.model.apply(run.variables, x)["embedding"]
  np.testing.assert_allclose(np.asarray(model(x)["embedding"]), np.asarray(want), atol=1e-5)
