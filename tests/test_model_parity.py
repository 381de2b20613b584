"""Flax models against the originals: the real aiSFX weights, and PANNs with seeded weights."""

import numpy as np
import pytest

from jaxaudio.models.registry import get_model, param_count
from jaxaudio.weights import convert
from jaxaudio.weights.pretrained import convert_file
from random_weights import random_state_dict

TOL = 1e-4


def test_aisfx_embeddings_match_pretrained_original(golden, aisfx_checkpoint):
  ref = golden("aisfx_embeddings.npz")
  info = get_model("aisfx")
  variables = convert_file(info, aisfx_checkpoint)
  out = np.asarray(info.build().apply(variables, ref["inputs"], train=False)["embedding"])
  assert out.shape == (4, 512)
  assert np.abs(out - ref["embeddings"]).max() < TOL
  assert param_count(variables["params"]) == int(ref["param_count"]) == 4_686_144


def torch_layout_random_weights(info, seed):
  return random_state_dict(convert.torch_shapes(info), seed)


@pytest.mark.parametrize("arch,params", [("cnn14", 80_753_615), ("cnn10", 5_219_279),
                                         ("cnn6", 4_837_455)])
def test_panns_match_official_architecture(golden, arch, params):
  ref = golden(f"panns_{arch}.npz")
  info = get_model(f"panns_{arch}")
  variables = convert.convert_state_dict(info, torch_layout_random_weights(info, int(ref["seed"])))
  out = info.build().apply(variables, ref["inputs"], train=False)
  assert np.abs(np.asarray(out["embedding"]) - ref["embedding"]).max() < TOL
  assert np.abs(np.asarray(out["audioset_logits"]) - ref["logits"]).max() < TOL
  assert param_count(variables["params"]) == int(ref["param_count"]) == params


def test_frozen_blocks_use_running_stats_and_stop_gradients():
  """A frozen prefix must neither update batch_stats nor receive gradients."""
  import jax
  import jax.numpy as jnp
  info = get_model("aisfx")
  module = info.build(frozen=("block1", "block2"), widths=(4, 8, 8, 16))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 100, 96))
  from jaxaudio.models.init import init_variables
  variables = init_variables(module, jax.random.PRNGKey(0), x)

  def loss(params):
    out, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                train=True, mutable=["batch_stats"])
    return jnp.sum(out["embedding"] ** 2), updates

  grads, updates = jax.grad(loss, has_aux=True)(variables["params"])
  for block in ("block1", "block2"):
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(grads[block]))
    for a, b in zip(jax.tree_util.tree_leaves(updates["batch_stats"][block]),
                    jax.tree_util.tree_leaves(variables["batch_stats"][block])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads["block3"]))
  moved = [np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(
      jax.tree_util.tree_leaves(updates["batch_stats"]["block3"]),
      jax.tree_util.tree_leaves(variables["batch_stats"]["block3"]))]
  assert any(moved)
