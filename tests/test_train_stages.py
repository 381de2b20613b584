"""Gradual unfreezing keeps optimizer state; the frozen-backbone fast path trains the same head."""

import jax
import numpy as np
import pytest

from jaxaudio.runs import configs
from jaxaudio.runtime.errors import ConfigError
from jaxaudio.models.registry import AISFX_SPEC, get_model
from jaxaudio.train import factory, head_only, stages, steps

from test_train_core import TINY, batch

HEAD_ONLY = (("^backbone/", "frozen"), ("^head/", "head"))
UNFREEZE = ((2, "^backbone/block4/", "backbone"), (4, "^backbone/block3/", "backbone"))


def train_cfg(**overrides):
  cfg = configs.base_config().train
  cfg.update(head_dropout=0.0, num_steps=8, warmup_steps=1, param_groups=HEAD_ONLY,
             probe_steps=0, learning_rate=3e-3)
  cfg.update(overrides)
  return cfg


def flat(tree):
  return {jax.tree_util.keystr(kp): np.asarray(v)
          for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def make_step(setup, model=None, augment=None):
  cfg = steps.StepConfig(model=model or setup.model, tx=setup.tx, trainable=setup.trainable,
                         num_classes=3, multi_label=False, augment=augment, spec=AISFX_SPEC)
  return jax.jit(lambda s, b: steps.train_step(s, b, cfg))


def test_plan_orders_rules_and_rejects_bad_entries():
  plan = stages.plan(train_cfg(unfreeze=UNFREEZE))
  assert plan.starts == (0, 2, 4)
  assert [plan.index(s) for s in range(6)] == [0, 0, 1, 1, 2, 2]
  assert plan.rules[0] == HEAD_ONLY
  assert plan.rules[2][:2] == (("^backbone/block3/", "backbone"), ("^backbone/block4/", "backbone"))
  with pytest.raises(ConfigError, match="step 2 must be after the previous stage"):
    stages.plan(train_cfg(unfreeze=((3, "a", "b"), (2, "c", "d"))))
  with pytest.raises(ConfigError, match=r"before train.num_steps \(8\)"):
    stages.plan(train_cfg(unfreeze=((8, "a", "b"),)))
  with pytest.raises(ConfigError, match="not a \\(step, regex, group\\) triple"):
    stages.plan(train_cfg(unfreeze=((3, "a"),)))


def test_unfreezing_stages_keep_optimizer_state_and_freeze_the_rest():
  cfg = train_cfg(unfreeze=UNFREEZE)
  info = get_model("aisfx")
  plan = stages.plan(cfg)
  setup = factory.build(info, 3, cfg, widths=TINY, plan=plan)
  assert setup.frozen_groups == ("block1", "block2", "block3", "block4")
  p0, s0 = flat(setup.state.params), flat(setup.state.batch_stats)
  state, stage, step_fn = setup.state, 0, make_step(setup)
  snapshots = {}
  for step in range(6):
    if plan.index(step) != stage:
      stage = plan.index(step)
      before = flat(state.opt_state)
      setup, host = factory.restage(setup, info, 3, cfg, plan, stage,
                                    jax.tree_util.tree_map(np.asarray, state), widths=TINY)
      after = flat(host.opt_state)
      # Groups already training keep every leaf bit for bit (moments and step count): the
      # head at stage 1; the head and block4's moments at stage 2.
      kept = [k for k in before if "inner_states['head']" in k or
              (stage == 2 and "inner_states['backbone']" in k and "'block4'" in k)]
      assert len(kept) >= (5 if stage == 1 else 9)
      for k in kept:
        assert after[k].tobytes() == before[k].tobytes(), k
      assert any(before[k].any() for k in kept if "'block4'" in k) or stage == 1
      fresh = [k for k in after if k not in before or after[k].shape != before[k].shape]
      assert fresh and all(not after[k].any() for k in fresh)   # new moments start at zero
      lrs = setup.learning_rates(step)
      assert lrs["head"] > 0.0 and (lrs["backbone"] == 0.0) == (stage == 1)  # own warmup
      state, step_fn = host, make_step(setup)
    snapshots[step] = flat(state.params)
    state, _ = step_fn(state, batch(seed=step))
  p6, s6 = flat(state.params), flat(state.batch_stats)

  def changed(tree_a, tree_b, block):
    return any(tree_a[k].tobytes() != tree_b[k].tobytes() for k in tree_a if f"'{block}'" in k)
  assert not changed(p0, snapshots[2], "block4") and changed(snapshots[2], p6, "block4")
  assert not changed(p0, snapshots[4], "block3") and changed(snapshots[4], p6, "block3")
  for block in ("block1", "block2", "bn0"):
    assert not changed(p0, p6, block) and not changed(s0, s6, block)
  assert setup.frozen_groups == ("block1", "block2")


def test_head_on_cached_embeddings_matches_the_full_model():
  """Backbone frozen, dropout on, no augmentation: the fast path computes the same head."""
  cfg = train_cfg(head_dropout=0.3)
  setup = factory.build(get_model("aisfx"), 3, cfg, widths=TINY)
  assert head_only.applies(cfg, setup.state.params, stages.plan(cfg))
  cfg_full = train_cfg(head_dropout=0.3, param_groups=(("^backbone/block4/", "backbone"),)
                       + HEAD_ONLY)
  assert not head_only.applies(cfg_full, setup.state.params, stages.plan(cfg_full))
  assert not head_only.applies(train_cfg(cache_embeddings="off"), setup.state.params,
                               stages.plan(cfg))

  model = head_only.head_model(cfg, 3)
  embed = jax.jit(lambda s, b: setup.model.apply(
      {"params": s.params, "batch_stats": s.batch_stats}, b, train=False)["embedding"])
  slow_step, fast_step = make_step(setup), make_step(setup, model)
  slow = fast = setup.state
  for i in range(4):
    b = batch(seed=i)
    slow, m_slow = slow_step(slow, b)
    fast, m_fast = fast_step(fast, dict(b, mel=embed(setup.state, b["mel"])))
    assert abs(float(m_slow["loss"]) - float(m_fast["loss"])) < 1e-5
  a, b = flat(slow.params), flat(fast.params)
  assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a if "head" in k) < 1e-5
  assert all(a[k].tobytes() == b[k].tobytes() for k in a if "backbone" in k)
  assert any(np.abs(a[k] - flat(setup.state.params)[k]).max() > 1e-3 for k in a if "head" in k)


def test_mixup_on_embeddings():
  from jaxaudio.train import augment
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  y = np.eye(4, dtype=np.float32)
  xm, ym = augment.mixup(jax.random.PRNGKey(0), x, y, 0.4)
  lam = ym.max(axis=1)
  assert xm.shape == (4, 3) and np.all(lam >= 0.5)
  np.testing.assert_allclose(ym.sum(1), 1.0, rtol=1e-6)
  partner = np.argmax(ym - np.eye(4) * lam[:, None], axis=1)
  assert partner.tolist() == [3, 0, 1, 2]   # the batch rolled by one
  np.testing.assert_allclose(xm, lam[:, None] * x + (1 - lam[:, None]) * x[partner], rtol=1e-5)


def test_probe_steps_train_the_head_alone_first():
  cfg = train_cfg(param_groups=configs.base_config().train.param_groups, probe_steps=3,
                  unfreeze=((5, "^backbone/block3/", "backbone"),))
  plan = stages.plan(cfg)
  assert plan.starts == (0, 3, 5)
  assert plan.rules[0][0] == ("^backbone/", "frozen")
  assert plan.rules[1] == tuple(cfg.param_groups)
  assert plan.rules[2][0] == ("^backbone/block3/", "backbone")
  params = factory.build(get_model("aisfx"), 3, cfg, widths=TINY, plan=plan).state.params
  assert [head_only.cached_stage(cfg, params, r) for r in plan.rules] == [True, False, False]
  assert plan.group_starts(params) == {"head": 0, "backbone": 3}
  with pytest.raises(ConfigError, match="after the previous stage \\(step 3, the end of "
                                        "train.probe_steps\\)"):
    stages.plan(train_cfg(probe_steps=3, unfreeze=((2, "a", "b"),)))
  with pytest.raises(ConfigError, match="train.probe_steps=8 is invalid"):
    stages.plan(train_cfg(probe_steps=8))
