"""Optimizer groups, frozen-means-frozen, augmentation, and the pure train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaudio.runs import configs
from jaxaudio.runtime.errors import ConfigError
from jaxaudio.models.registry import AISFX_SPEC, PANNS_SPEC, get_model
from jaxaudio.train import augment, factory, optimizer, steps

TINY = (4, 8, 8, 16)


# Blocks 1-3 frozen, block 4 and the head training: the mechanism tests below count on it.
BLOCK4 = (("^backbone/(bn0|block1|block2|block3)/", "frozen"), ("^backbone/", "backbone"),
          ("^head/", "head"))


def tiny_setup(rules=BLOCK4, num_classes=3, **train_overrides):
  cfg = configs.base_config().train
  cfg.head_dropout, cfg.probe_steps, cfg.num_steps = 0.0, 0, 100
  cfg.augment.enabled = True   # step_cfg(augment_on=True) exercises the whole chain
  for k, v in train_overrides.items():
    cfg[k] = v
  if rules is not None:
    cfg.param_groups = rules
  return factory.build(get_model("aisfx"), num_classes, cfg, widths=TINY), cfg


def batch(n=12, seed=0):
  """Three classes this architecture can tell apart (it averages over mel bands)."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 3
  mel = rng.uniform(0, 0.3, (n, 100, 96)).astype(np.float32)
  mel[labels == 1, ::4, :] += 0.5         # class 1: temporal stripes
  mel[labels == 2] += 0.3                 # class 2: louder everywhere
  return {"mel": jnp.asarray(mel), "label": jnp.asarray(labels, jnp.int32),
          "mask": jnp.ones(n, jnp.float32)}


def step_cfg(setup, cfg, augment_on=True, axis_name=None):
  return steps.StepConfig(model=setup.model, tx=setup.tx, trainable=setup.trainable,
                          num_classes=3, multi_label=False,
                          augment=cfg.augment if augment_on else None, spec=AISFX_SPEC,
                          silence=0.0, axis_name=axis_name)


def test_groups_first_match_wins_and_cover_everything():
  setup, _ = tiny_setup()
  a = setup.assignment
  assert a["backbone/block1/conv1/kernel"] == "frozen" and a["backbone/block3/bn2/scale"] == "frozen"
  assert a["backbone/block4/conv2/kernel"] == "backbone" and a["head/kernel"] == "head"
  assert setup.frozen_groups == ("block1", "block2", "block3")
  with pytest.raises(ConfigError, match=r"leaves 2 parameters without a group \(head/bias, head/kernel\)"):
    tiny_setup(rules=(("^backbone/", "frozen"),))
  with pytest.raises(ConfigError, match="no learning-rate multiplier"):
    tiny_setup(rules=(("^backbone/", "frozen"), ("^head/", "classifier")))
  assert "frozen: 18 tensors, 2,276 params" in optimizer.describe(a, setup.state.params)


def test_frozen_means_frozen_bitwise_and_without_optimizer_state():
  setup, cfg = tiny_setup()
  params0 = jax.tree_util.tree_map(np.array, setup.state.params)
  stats0 = jax.tree_util.tree_map(np.array, setup.state.batch_stats)
  params0["backbone"]["block1"]["conv1"]["kernel"][0, 0, 0, 0] = -0.0   # sign bit must survive
  state = setup.state.replace(params=jax.tree_util.tree_map(jnp.asarray, params0))
  train = jax.jit(lambda s, b: steps.train_step(s, b, step_cfg(setup, cfg)))
  for i in range(4):
    state, metrics = train(state, batch(seed=i))
  for block in ("block1", "block2", "block3"):
    for got, want in zip(jax.tree_util.tree_leaves(state.params["backbone"][block]),
                         jax.tree_util.tree_leaves(params0["backbone"][block])):
      assert np.asarray(got).tobytes() == want.tobytes()
    for got, want in zip(jax.tree_util.tree_leaves(state.batch_stats["backbone"][block]),
                         jax.tree_util.tree_leaves(stats0["backbone"][block])):
      assert np.asarray(got).tobytes() == want.tobytes()
  assert np.signbit(np.asarray(state.params["backbone"]["block1"]["conv1"]["kernel"])[0, 0, 0, 0])
  changed = lambda a, b: any(np.any(np.asarray(x) != y) for x, y in zip(
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert changed(state.params["backbone"]["block4"], params0["backbone"]["block4"])
  assert changed(state.batch_stats["backbone"]["block4"], stats0["backbone"]["block4"])
  assert changed(state.params["head"], params0["head"])
  # Adam moments exist for trainable leaves only: 2 x (block4: 6 tensors + head: 2).
  moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0]
  assert len(moments) == 2 * (6 + 2)
  assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0


def test_no_gradient_flows_into_frozen_prefix():
  """The backward pass of frozen blocks is never built: the jaxpr has no conv transpose for
  block1-3 when frozen, and does when they train."""
  def count_grad_convs(rules):
    setup, cfg = tiny_setup(rules=rules)
    fn = lambda s, b: steps.train_step(s, b, step_cfg(setup, cfg, augment_on=False))
    text = jax.jit(fn).lower(setup.state, batch()).as_text()
    return text.count("stablehlo.convolution")
  frozen = count_grad_convs(BLOCK4)
  full = count_grad_convs((("^backbone/", "backbone"), ("^head/", "head")))
  # 8 forward convs always; per trainable conv a weight gradient, and an input gradient unless
  # its input needs none: the first conv, and block4's first conv when block1-3 are frozen.
  assert frozen == 8 + 2 + 1 and full == 8 + 8 + 7


def test_training_learns_a_separable_problem():
  setup, cfg = tiny_setup(rules=(("^backbone/", "backbone"), ("^head/", "head")),
                          warmup_steps=2, learning_rate=3e-3,
                          group_lr_mult={"head": 1.0, "backbone": 1.0})
  train = jax.jit(lambda s, b: steps.train_step(s, b, step_cfg(setup, cfg, augment_on=False)))
  state, losses = setup.state, []
  for i in range(30):
    state, m = train(state, batch(seed=i % 4))
    losses.append(float(m["loss"]))
  assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5])   # measured: 0.99 -> 0.004
  assert float(m["accuracy"]) == 1.0


def test_spec_augment_masks_bounded_and_filled_with_silence():
  x = jnp.ones((16, 100, 96))
  y = augment.spec_augment(jax.random.PRNGKey(0), x, 2, 10, axis=1, fill=-100.0)
  masked_frames = np.asarray((y == -100.0).all(axis=2)).sum(axis=1)
  assert masked_frames.max() <= 20 and masked_frames.sum() > 0
  assert set(np.unique(np.asarray(y))) <= {1.0, -100.0}
  z = augment.spec_augment(jax.random.PRNGKey(1), x, 2, 8, axis=2, fill=0.0)
  assert np.asarray((z == 0).all(axis=1)).sum(axis=1).max() <= 16


def _gain_db_of(x, y, spec):
  """The waveform gain (dB) that turns features x into y, per bin, inverted with numpy from
  the spec's definition: (compress(power) - norm_min) / span."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  span = spec.norm_max - spec.norm_min
  if spec.compression == "power_to_db":
    return (y - x) * span
  power = lambda v: (10.0 ** (v * span + spec.norm_min) - spec.log_shift) / spec.log_scale
  return 10.0 * np.log10(power(y) / power(x))


def test_gain_is_a_waveform_gain_seen_through_the_frontend():
  """Each augmented example is the frontend of its waveform scaled by one gain g (numpy's
  log-mel of the scaled waveform, not the augmentation's formula); max_db ~ 0 changes nothing."""
  from jaxaudio.audio.frontend import log_mel
  from datafixtures import tone
  waves = [tone(300 * (i + 1), 100 * 1024 / 44100, seed=i) for i in range(4)]
  x = jnp.asarray(np.stack([log_mel(w, AISFX_SPEC)[:100] for w in waves]))
  np.testing.assert_allclose(augment.random_gain(jax.random.PRNGKey(0), x, AISFX_SPEC, 1e-7), x,
                             atol=1e-5)
  y = np.asarray(augment.random_gain(jax.random.PRNGKey(3), x, AISFX_SPEC, 6.0))
  loud = np.asarray(x) > 0.2   # bins with power well above log10's +1 shift
  for i, w in enumerate(waves):
    g = np.median(_gain_db_of(x[i], y[i], AISFX_SPEC)[loud[i]])
    assert 0.05 < abs(g) <= 6.0, g
    want = log_mel(w * np.float32(10 ** (g / 20)), AISFX_SPEC)[:100]
    np.testing.assert_allclose(y[i], want, atol=2e-4)
    assert np.abs(y[i] - np.asarray(x[i])).max() > 1e-3


@pytest.mark.parametrize("spec", [AISFX_SPEC, PANNS_SPEC], ids=["log10", "dB"])
def test_gain_is_one_uniform_gain_per_example(spec):
  """4000 examples: one gain per example (every bin agrees), drawn from U(-6, 6) dB (KS test
  against the uniform law): an identity, a fixed or a one-sided gain all fail."""
  from scipy.stats import kstest
  x = jnp.asarray(np.random.default_rng(0).uniform(0.3, 0.9, (4000, 3, 2)), jnp.float32)
  y = augment.random_gain(jax.random.PRNGKey(1), x, spec, 6.0)
  g = _gain_db_of(x, y, spec).reshape(4000, -1)
  np.testing.assert_allclose(g, g[:, :1].repeat(g.shape[1], 1), atol=2e-3)
  g = g[:, 0]
  assert np.all(np.abs(g) <= 6.0 + 1e-3)
  assert kstest(g, "uniform", args=(-6.0, 12.0)).pvalue > 1e-3, (g.mean(), g.std())


def test_time_shift_rolls_each_example_by_a_uniform_whole_number_of_frames():
  """Each example equals np.roll of its input along time by one shift in [-10, 10] frames (10%
  of 100), the shifts spread over that whole range (chi-square against uniform)."""
  from scipy.stats import chisquare
  x = np.random.default_rng(0).normal(size=(630, 100, 3)).astype(np.float32)
  np.testing.assert_array_equal(augment.time_shift(jax.random.PRNGKey(0), jnp.asarray(x), 0.0), x)
  s = np.asarray(augment.time_shift(jax.random.PRNGKey(0), jnp.asarray(x), 0.1))
  shifts = []
  for i in range(len(x)):
    found = [k for k in range(-10, 11) if np.array_equal(np.roll(x[i], k, axis=0), s[i])]
    assert len(found) == 1, (i, found)
    shifts.append(found[0])
  counts = np.bincount(np.asarray(shifts) + 10, minlength=21)
  assert counts.min() > 0 and chisquare(counts).pvalue > 1e-3, counts


def test_mixup_mixes_each_example_with_its_neighbour_as_its_labels_say():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 100, 96)), jnp.float32)
  y = jnp.eye(4)   # distinct labels: example i's weight is its label's share
  mx, my = augment.mixup(jax.random.PRNGKey(0), x, y, 0.4)
  lam = np.diag(np.asarray(my)).astype(np.float64)
  np.testing.assert_allclose(np.asarray(my), lam[:, None] * np.eye(4) +
                             (1 - lam[:, None]) * np.roll(np.eye(4), 1, axis=0), atol=1e-6)
  want = lam[:, None, None] * np.asarray(x) + (1 - lam[:, None, None]) * np.roll(x, 1, axis=0)
  np.testing.assert_allclose(np.asarray(mx), want, atol=1e-5)
  assert lam.min() >= 0.5 - 1e-6 and lam.min() < 0.99   # mixed, original dominant


@pytest.mark.parametrize("devices", [2, 8])
def test_pmap_and_jit_match_one_device(devices):
  """Same parameters and BatchNorm statistics after 3 steps as one device with the global
  batch (measured 6e-8 on 2 devices, 1.2e-7 on 8; tolerance 1e-6 with parameters moving
  6e-4), the pools averaging: the script's docstring says why a max pool's gradient cannot
  be held to rounding across device counts."""
  import json
  import os
  import subprocess
  import sys
  script = os.path.join(os.path.dirname(__file__), "parallel_equivalence.py")
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env,
                       check=True, timeout=600)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  for mode in ("pmap", "jit"):
    assert result[mode]["devices"] == devices
    assert result[mode]["max_abs_diff"] < 1e-6 < result[mode]["param_change"]


def test_mixed_precision_computes_in_bfloat16_and_keeps_float32_params():
  runs = {}
  for mixed in (False, True):
    setup, cfg = tiny_setup(rules=(("^head/", "head"), ("^backbone/", "backbone")),
                            mixed_precision=mixed)
    fn = jax.jit(lambda s, b, c=step_cfg(setup, cfg, augment_on=False): steps.train_step(s, b, c))
    hlo = fn.lower(setup.state, batch()).as_text()
    convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    state, metrics = fn(setup.state, batch())
    loss = float(metrics["loss"])
    state, _ = fn(state, batch(seed=1))   # step 0 has warmup's zero learning rate
    runs[mixed] = (convs, state, loss)
  f32_convs, f32_state, f32_loss = runs[False]
  bf16_convs, bf16_state, bf16_loss = runs[True]
  assert f32_convs and all("bf16" not in c for c in f32_convs)
  assert len(bf16_convs) == len(f32_convs) and all("xbf16>" in c for c in bf16_convs)
  for leaf in jax.tree_util.tree_leaves((bf16_state.params, bf16_state.batch_stats,
                                         bf16_state.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  assert abs(bf16_loss - f32_loss) < 0.02 * abs(f32_loss)
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                f32_state.params, bf16_state.params)
  assert 0 < max(jax.tree_util.tree_leaves(diff)) < 5e-3
