"""XLA:CPU options that make our CNNs faster on CPUs, set before JAX starts its backends.

XLA:CPU's own kernels for the gradients of convolutions are slow (aiSFX's first 64->64
convolution: forward and backward 1.19 s at batch 32, PyTorch 0.57 s). Handing XLA's dots
and convolutions to YNNPACK (XNNPACK's successor, built into jaxlib) brings it to 0.52 s;
that is the process-wide option. A jitted training step also hands YNNPACK its reductions
(BatchNorm's statistics and their gradients): aiSFX's full fine-tuning step goes from 10.3
to 12.3 examples/s (bench/compare_torch.py), while a forward pass gets slower that way
(PANNs Cnn10 6.8 -> 5.6 examples/s), so evaluation and embedding keep dots alone.
Elementwise fusions (`eltwise`) were tried and left out: +2% on aiSFX's full step, -25% on
its forward.

Its float32 arithmetic sums in another order: the gradients of aiSFX's training step lie
2.0e-4 (median leaf, relative norm; worst 1.1e-3) off a float64 reference, XLA's own
kernels 9.0e-4 (worst 1.6e-3), PyTorch's float32 1.2e-4 (worst 1.4e-3) at the same point
(`bench/grad_accuracy.py --torch`); N devices match one device to 1.2e-7 after 3 Adam steps
(average pools: tests/parallel_equivalence.py).
The option only changes how XLA compiles for the CPU; GPU and TPU programs are untouched,
so it is safe to set on every machine.

XLA reads XLA_FLAGS once, when JAX creates its first backend, so every command that runs
a model (`main`, `sweep`, `evaluate`, `select`, `embed`, `predict`, `search`) imports
jaxaudio/runtime/command.py first, which applies this before JAX starts. Under YNNPACK a window embeds bit for bit alike
in batches of 1 to 64 (jit and the exported model); search, which used to keep XLA's kernels,
now breaks ties between windows that score alike up to rounding by a rule every kernel
agrees on (search/exact.py), so it takes them too (`search index`: 41 clips/s instead of
34-36). A flag the user already put in XLA_FLAGS for the same option wins;
JAXAUDIO_XLA_CPU_DEFAULT=1 keeps XLA's kernels.
"""

from __future__ import annotations

import os
import sys

import jax

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_VALUE = "dot"
TRAIN_STEP_VALUE = "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"   # proto enum names
OPT_OUT = "JAXAUDIO_XLA_CPU_DEFAULT"
_state = {"set_by_us": False}


def backends_started() -> bool:
  """Whether JAX has already created a backend (then XLA_FLAGS is no longer read)."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(bridge is not None and getattr(bridge, "_backends", None))


def apply(environ=os.environ) -> bool:
  """Add the YNNPACK fusion option to XLA_FLAGS unless the user set it, opted out, or JAX
  already runs; returns whether it is in effect for this process's XLA:CPU."""
  flags = environ.get("XLA_FLAGS", "")
  if YNN_OPTION in flags:
    return f"--{YNN_OPTION}={YNN_VALUE}" in flags.split()
  if environ.get(OPT_OUT, "") not in ("", "0") or backends_started():
    return False
  environ["XLA_FLAGS"] = f"{flags} --{YNN_OPTION}={YNN_VALUE}".strip()
  _state["set_by_us"] = environ is os.environ
  return True


def train_step_options() -> dict[str, str] | None:
  """compiler_options for a jitted training step on the CPU backend: YNNPACK for dots and
  reductions, when this module set the process-wide option (never over a user's own
  XLA_FLAGS or the opt-out); None elsewhere. jax.pmap takes no compiler options, so a pmap
  step keeps dots alone (aiSFX full fine-tune 10.3 examples/s against jit's 12.3)."""
  if not _state["set_by_us"] or jax.default_backend() != "cpu":
    return None
  return {YNN_OPTION: TRAIN_STEP_VALUE}
