"""Recipe options: BatchNorm on running averages, label smoothing, class-weighted loss,
class-balanced sampling and weight averaging (EMA)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.utils.class_weight import compute_class_weight

from jaxaudio.runs import configs
from jaxaudio.data import pipeline
from jaxaudio.runtime.errors import ConfigError
from jaxaudio.models.registry import AISFX_SPEC
from jaxaudio.train import optimizer, steps
from test_train_core import batch, tiny_setup

TRAIN_ALL = (("^backbone/", "backbone"), ("^head/", "head"))


def _step(setup, cfg, **kw):
  sc = steps.StepConfig(model=setup.model, tx=setup.tx, trainable=setup.trainable,
                        num_classes=3, multi_label=False, augment=None, spec=AISFX_SPEC, **kw)
  return jax.jit(lambda s, b: steps.train_step(s, b, sc))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_bn_running_keeps_statistics_and_normalises_with_them():
  setup, cfg = tiny_setup(rules=TRAIN_ALL, bn="running", warmup_steps=1)
  state = setup.state
  for i in range(3):
    state, m = _step(setup, cfg)(state, batch(seed=i))
  # running averages untouched bit for bit, while every block's weights moved
  assert all(a.tobytes() == b.tobytes() for a, b in zip(_leaves(state.batch_stats),
                                                       _leaves(setup.state.batch_stats)))
  assert all(np.any(a != b) for a, b in zip(_leaves(state.params["backbone"]["block1"]),
                                            _leaves(setup.state.params["backbone"]["block1"])))
  # the training forward equals evaluation mode (running averages, no dropout)
  x = batch()["mel"]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  train_out, _ = setup.model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(train_out["logits"], setup.model.apply(variables, x)["logits"])
  batch_mode, _ = tiny_setup(rules=TRAIN_ALL)
  out, _ = batch_mode.model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert np.abs(np.asarray(out["logits"] - train_out["logits"])).max() > 1e-3


def test_label_smoothing_and_class_weights_match_a_direct_computation():
  setup, cfg = tiny_setup(warmup_steps=1, bn="running")   # training forward == eval forward
  b = batch(n=12)
  weights = (0.5, 2.0, 1.0)
  _, m = _step(setup, cfg, label_smoothing=0.1, class_weights=weights)(setup.state, b)
  logits = setup.model.apply({"params": setup.state.params,
                              "batch_stats": setup.state.batch_stats}, b["mel"])["logits"]
  targets = optax.smooth_labels(jax.nn.one_hot(b["label"], 3), 0.1)
  per_example = -jnp.sum(targets * jax.nn.log_softmax(logits), -1)
  want = float(jnp.sum(per_example * jnp.asarray(weights)[b["label"]]) / 12)
  assert float(m["loss"]) == pytest.approx(want, rel=1e-5)   # tiny_setup has no dropout


def test_balanced_weights_equal_sklearn_and_balanced_sampling_draws_classes_equally():
  labels = np.array([0] * 50 + [1] * 5 + [2] * 20)
  want = compute_class_weight("balanced", classes=np.arange(3), y=labels)
  np.testing.assert_allclose(pipeline.balanced_class_weights(labels, 3), want, rtol=1e-12)
  assert pipeline.balanced_class_weights(labels, 4)[3] == 0.0
  records = [{"label": np.int64(l), "id": i} for i, l in enumerate(labels)]
  view = pipeline.BalancedSource(records, labels, seed=0)
  assert len(view) == 150
  drawn = collections.Counter(int(view[i]["label"]) for i in range(len(view)))
  assert drawn == {0: 50, 1: 50, 2: 50}
  ids = collections.Counter(view[i]["id"] for i in range(len(view)))
  assert set(ids) == set(range(75))                       # every record kept
  assert {ids[i] for i in range(50, 55)} == {10}          # the rare class repeats evenly
  assert {ids[i] for i in range(55, 75)} <= {2, 3}        # 50 = 2 x 20 + 10 drawn once more
  again = pipeline.BalancedSource(records, labels, seed=0)
  assert [again[i]["id"] for i in range(150)] == [view[i]["id"] for i in range(150)]
  assert repr(again) == repr(view)


def test_params_ema_follows_the_updated_weights_and_leaves_frozen_ones_alone():
  params = {"a": jnp.array([1.0, -2.0]), "frozen": jnp.array([-0.0, 3.0])}
  trainable = {"a": True, "frozen": False}
  tx = optimizer.with_params_ema(optax.sgd(0.1), 0.9, trainable)
  state = tx.init(params)
  ema = np.array([1.0, -2.0])
  p = params
  for t in range(30):
    grads = {"a": jnp.array([1.0 + t, -0.5]), "frozen": jnp.zeros(2)}
    updates, state = tx.update(grads, state, p)
    updates = {"a": updates["a"], "frozen": jnp.zeros(2)}
    p = optax.apply_updates(p, updates)
    d = min(0.9, (1 + t) / (10 + t))
    ema = d * ema + (1 - d) * np.asarray(p["a"], np.float64)
  np.testing.assert_allclose(np.asarray(state.ema["a"]), ema, rtol=1e-5)
  assert np.asarray(state.ema["frozen"]).tobytes() == np.asarray(params["frozen"]).tobytes()
  assert int(state.count) == 30
  # Evaluation reads the average; training keeps the raw weights.
  setup, _ = tiny_setup(rules=TRAIN_ALL, warmup_steps=1, ema_decay=0.5)
  st = setup.state
  for i in range(3):
    st, _ = _step(setup, None)(st, batch(seed=i))
  assert isinstance(st.opt_state, optimizer.ParamsEma)
  sc = steps.StepConfig(model=setup.model, tx=setup.tx, trainable=setup.trainable,
                        num_classes=3, multi_label=False, spec=AISFX_SPEC)
  got = steps.eval_step(st, batch(), sc)["logits"]
  want = setup.model.apply({"params": st.opt_state.ema, "batch_stats": st.batch_stats},
                           batch()["mel"])["logits"]
  raw = setup.model.apply({"params": st.params, "batch_stats": st.batch_stats},
                          batch()["mel"])["logits"]
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert np.abs(np.asarray(raw - want)).max() > 1e-4


def test_recipe_keys_are_validated():
  for key, value in (("bn", "frozen"), ("label_smoothing", 1.0), ("class_weights", "inverse"),
                     ("sampling", "oversample"), ("ema_decay", 1.0)):
    c = configs.base_config()
    c.train[key] = value
    with pytest.raises(ConfigError, match=f"train.{key}"):
      configs.validate(c)
