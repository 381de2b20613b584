"""The CPU fast paths: pooling written as reshape + reduction with its own gradient, and the
XLA:CPU option (YNNPACK fusions) set before JAX starts; both against the plain references."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaudio.runtime import xla_cpu
from jaxaudio.models.layers import pool2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape", [(3, 8, 6, 5), (2, 25, 24, 4), (2, 7, 9, 3)])
def test_pool_matches_flax_pooling_and_its_gradient(kind, shape):
  """Odd sizes drop the trailing row/column as VALID pooling does; through a ReLU (as in the
  models, where zero ties are common) the gradient equals jax.grad of the Flax pooling."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  flax_pool = nn.max_pool if kind == "max" else nn.avg_pool
  ref = lambda x: flax_pool(jax.nn.relu(x), (2, 2), strides=(2, 2), padding="VALID")
  ours = lambda x: pool2d(jax.nn.relu(x), (2, 2), kind)
  np.testing.assert_array_equal(ours(x), ref(x))
  w = jnp.asarray(np.random.default_rng(1).standard_normal(ref(x).shape), jnp.float32)
  g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
  g_ours = jax.jit(jax.grad(lambda x: jnp.sum(ours(x) * w)))(x)
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_max_pool_gradient_goes_to_the_first_of_tied_maxima():
  """PyTorch's rule: one element per window takes the gradient, the first in row-major order;
  a rule that compares inputs with the max would split it, or lose it where XLA recomputes
  the inputs with other rounding."""
  x = jnp.asarray([[3., 1.], [3., 2.]]).reshape(1, 2, 2, 1)
  g = jax.grad(lambda x: jnp.sum(pool2d(x, (2, 2))))(x)
  np.testing.assert_array_equal(g.reshape(2, 2), [[1., 0.], [0., 0.]])
  x = jnp.asarray([[0., 5.], [5., 5.]]).reshape(1, 2, 2, 1)
  g = jax.grad(lambda x: jnp.sum(pool2d(x, (2, 2))))(x)
  np.testing.assert_array_equal(g.reshape(2, 2), [[0., 1.], [0., 0.]])


def test_aisfx_gradients_with_fast_pooling_match_flax_pooling(monkeypatch):
  """The whole aiSFX classifier (BatchNorm on batch statistics): gradients with pool2d
  equal those of nn.max_pool to 1e-5 relative, leaf by leaf."""
  from jaxaudio.models import layers
  from jaxaudio.models.aisfx import AiSFX
  from jaxaudio.models.head import EmbeddingClassifier
  model = EmbeddingClassifier(AiSFX(widths=(8, 16, 16, 32)), 5)
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (6, 100, 96)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  y = jnp.arange(6) % 5

  def grads():
    def loss(p):
      out, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                           train=True, mutable=["batch_stats"])
      return jnp.mean(jax.nn.log_softmax(out["logits"])[jnp.arange(6), y])
    return jax.jit(jax.grad(loss))(variables["params"])

  fast = grads()
  monkeypatch.setattr(layers, "pool2d", lambda x, window, kind="max": nn.max_pool(
      x, window, strides=window, padding="VALID"))
  plain = grads()
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(plain)[0], jax.tree.leaves(fast)):
    scale = float(jnp.max(jnp.abs(a)))
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * scale, jax.tree_util.keystr(path)


def _flags_in_fresh_process(env, start="import jaxaudio.main"):
  """(XLA_FLAGS, the training step's compiler options) in a new process that starts as
  `start` says: importing the training command's module, or applying the option as that
  module's header does (the same call, without the command's 5 s of imports)."""
  code = (f"{start}; import os, jax, jax.numpy as jnp; from jaxaudio.runtime import xla_cpu; "
          "jnp.ones(1).block_until_ready(); "
          "print(repr((os.environ.get('XLA_FLAGS', ''), xla_cpu.train_step_options())))")
  return eval(_fresh_python(code, env).splitlines()[-1])  # pylint: disable=eval-used


def _clean_env():
  """This process's environment without XLA_FLAGS and the opt-out."""
  return {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT)}


def _fresh_python(code, env=None):
  """stdout of `python -c code` in a new process whose environment has neither XLA_FLAGS
  nor the opt-out, plus `env`."""
  r = subprocess.run([sys.executable, "-c", code], env=dict(_clean_env(), **(env or {})),
                     cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
  return r.stdout.strip()


def test_ynn_option_is_set_before_jax_starts_and_the_user_wins():
  option = f"--{xla_cpu.YNN_OPTION}={xla_cpu.YNN_VALUE}"
  train = {xla_cpu.YNN_OPTION: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  assert _flags_in_fresh_process({}) == (option, train)
  header = "from jaxaudio.runtime import xla_cpu; xla_cpu.apply()"
  assert _flags_in_fresh_process({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"},
                                 header) == (f"--xla_cpu_enable_fast_math=false {option}", train)
  own = f"--{xla_cpu.YNN_OPTION}=eltwise"
  assert _flags_in_fresh_process({"XLA_FLAGS": own}, header) == (own, None)
  assert _flags_in_fresh_process({xla_cpu.OPT_OUT: "1"}, header) == ("", None)


def test_every_command_that_runs_a_model_sets_the_option_before_jax_starts():
  """Importing each command's module, each in its own fresh process (run side by side),
  leaves the option in XLA_FLAGS for the backend JAX then creates."""
  option = f"--{xla_cpu.YNN_OPTION}={xla_cpu.YNN_VALUE}"
  modules = ("jaxaudio.predict", "jaxaudio.embed", "jaxaudio.search.__main__",
             "jaxaudio.select", "jaxaudio.sweep", "jaxaudio.evaluate")
  env = _clean_env()
  procs = {m: subprocess.Popen(
      [sys.executable, "-c", f"import {m}, os, jax.numpy as jnp; jnp.ones(1).block_until_ready(); "
       "print(os.environ.get('XLA_FLAGS', ''))"],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for m in modules}
  for m, p in procs.items():
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == option, m


def test_ynn_option_is_not_claimed_once_jax_runs():
  """In this process JAX is already running (earlier tests computed): apply() must not
  pretend the option took effect, since XLA read XLA_FLAGS at start."""
  jnp.ones(1).block_until_ready()
  env = {}
  assert xla_cpu.backends_started()
  assert xla_cpu.apply(env) is False and "XLA_FLAGS" not in env
