"""jaxaudio against PyTorch on the same CPU: aiSFX training steps and forward, side by side.

  pip install -e '.[bench]'      # torch (CPU machines: pip install torch --index-url
                                 # https://download.pytorch.org/whl/cpu avoids the CUDA wheels)
  python bench/compare_torch.py [--batch=32] [--threads=N] [--steps=5] [--rounds=5]
                                [--modes=full,default,frozen3,head,forward] [--json=PATH]

One process, one thread count for both (torch.set_num_threads; XLA:CPU uses every core the
process may run on, so pin with `taskset -c 0-{N-1}` when N is below the machine's cores).
The PyTorch network is the class the `aisfx` wheel ships (aisfx/models/cnn2d.py
EmbeddingNet, fetched with `pip download` like the weights, imported from that file alone:
the wheel pins numpy 1.23) with the wheel's own checkpoint; jaxaudio runs its converted
weights through the trainer's real jitted step. Both train the same classifier (embedding ->
Linear(num_classes)) with Adam at 3e-4, softmax cross-entropy, BatchNorm in batch mode on
trainable blocks and on running averages on frozen ones, no augmentation; the same batch of
random log-mels every step (throughput does not depend on the values). Compile and warm-up
steps are excluded. Each round times `--steps` steps of jaxaudio, then of PyTorch, so drift
on a shared machine hits both; the table gives the median examples/s over the rounds, the
spread, and the ratio jaxaudio / PyTorch. A second's pause before each timed block lets
the other framework's worker threads (OpenMP, XLA) stop spinning first.

Each row also says how close both come to what the cores can do: the step's floating-point
operations per example (XLA's count of the compiled step; the same network does the same
work in both) times examples/s, as a fraction of the float32 matmul peak measured at the
start (a 2048^3 matmul in each framework, the better of the two). A step near 100% has
nothing left to gain in float32; no framework can then be much faster than the other.

Modes: full (everything trains), default (the default recipe: block1 frozen), frozen3
(blocks 1-3 frozen), head (backbone frozen, full forward each step: the like-for-like step;
jaxaudio's cached-embedding path skips the forward altogether), forward (evaluation mode).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
from jaxaudio.runtime import xla_cpu  # noqa: E402

xla_cpu.apply()   # as the training commands do, before JAX starts

import jax  # noqa: E402

from jaxaudio.runs import configs  # noqa: E402
from jaxaudio.data.pipeline import device_batch  # noqa: E402
from jaxaudio.models.registry import get_model  # noqa: E402
from jaxaudio.train import factory, parallel  # noqa: E402
from jaxaudio.train import steps as steps_lib  # noqa: E402
from jaxaudio.weights import pretrained, sources  # noqa: E402

NUM_CLASSES = 10
SETTLE_S = 1.0
LR = 3e-4
BLOCKS = ("block1", "block2", "block3", "block4")
# mode -> frozen aiSFX blocks (None: evaluation forward only)
MODES = {"full": (), "default": ("block1",), "frozen3": ("block1", "block2", "block3"),
         "head": BLOCKS, "forward": None}


def rules(frozen: tuple[str, ...]):
  """param_groups freezing `frozen` (and the stem that goes with block1)."""
  if not frozen:
    return (("^backbone/", "backbone"), ("^head/", "head"))
  return ((f"^backbone/({'|'.join(frozen)})/", "frozen"), ("^backbone/", "backbone"),
          ("^head/", "head"))


# ---------------------------------------------------------------- jaxaudio


def jax_runner(mode: str, batch: int, mel: np.ndarray, labels: np.ndarray,
               mixed_precision: bool = False):
  """A function n -> seconds for n jaxaudio steps of `mode` (compiled and warmed up)."""
  info = get_model("aisfx")
  cfg = configs.base_config().train
  cfg.update(probe_steps=0, num_steps=1000, learning_rate=LR, cache_embeddings="off",
             mixed_precision=mixed_precision)
  cfg.param_groups = rules(MODES[mode] or ())
  setup = factory.build(info, NUM_CLASSES, cfg, pretrained=pretrained.pretrained_variables(info)[0])
  scfg = steps_lib.StepConfig(model=setup.model, tx=setup.tx, trainable=setup.trainable,
                              num_classes=NUM_CLASSES, multi_label=False, augment=None,
                              spec=info.spec, silence=0.0)
  par = parallel.make("jit", scfg)
  data = {"mel": mel, "label": labels, "mask": np.ones(batch, np.float32)}
  b = device_batch(data, "jit", par.mesh)
  holder = {"state": par.put_state(setup.state)}

  if MODES[mode] is None:
    def run(n):
      start = time.perf_counter()
      for _ in range(n):
        out = par.eval_step(holder["state"], b)
      jax.block_until_ready(out)
      return time.perf_counter() - start
  else:
    def run(n):
      start = time.perf_counter()
      state = holder["state"]
      for _ in range(n):
        state, m = par.train_step(state, b)
      jax.block_until_ready(m)
      holder["state"] = state
      return time.perf_counter() - start
  step = par.eval_step if MODES[mode] is None else par.train_step
  run(2)   # compile + warm-up
  return run, flops_per_example(step, holder["state"], b, batch)


def flops_per_example(step, state, batch_arrays, batch: int) -> float:
  """The compiled step's floating-point operations per example, as XLA counts them (the
  same network and step for both frameworks, so one count serves both)."""
  cost = step.lower(state, batch_arrays).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / batch


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """GFLOP/s of an n x n float32 matmul in each framework (best of `repeats`): what this
  machine's cores reach on the densest work there is, the yardstick for the steps."""
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
  ja, jb = jax.device_put(a), jax.device_put(b)
  mm = jax.jit(lambda x, y: x @ y)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  runs = {"jaxaudio": lambda: mm(ja, jb).block_until_ready(), "pytorch": lambda: ta @ tb}
  peak = {}
  for name, fn in runs.items():
    fn()
    best = min(_seconds(fn) for _ in range(repeats))
    peak[name] = 2 * n ** 3 / best / 1e9
  return peak


def _seconds(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


# ---------------------------------------------------------------- PyTorch


def torch_embedding_net():
  """aisfx's EmbeddingNet class, from the wheel's cnn2d.py, with the wheel's checkpoint."""
  import torch  # pylint: disable=import-outside-toplevel  (bench-only extra)
  folder = os.path.join(sources.cache_dir(), "originals", "aisfx-0.1.2-code")
  member = "aisfx/models/cnn2d.py"
  if not os.path.isfile(os.path.join(folder, "cnn2d.py")):
    sources.fetch_wheel(sources.AISFX_REQUIREMENT, {member: "cnn2d.py"}, folder, "aiSFX code",
                        "install aisfx==0.1.2 with --no-deps")
  spec = importlib.util.spec_from_file_location("aisfx_cnn2d", os.path.join(folder, "cnn2d.py"))
  cnn2d = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cnn2d)
  net = cnn2d.EmbeddingNet(pool_type="max", ks=3, strd=1, hl1=64)
  # The wheel's checkpoint is (CrossNet state_dict, dataset dictionary).
  state, _ = torch.load(sources.aisfx_checkpoint(), map_location="cpu", weights_only=False)
  prefix = "embedding_net."
  net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
  return net


def torch_runner(mode: str, batch: int, mel: np.ndarray, labels: np.ndarray):
  """A function n -> seconds for n PyTorch steps of `mode` (warmed up)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  net = torch_embedding_net()
  head = torch.nn.Linear(512, NUM_CLASSES)
  x, y = torch.from_numpy(mel), torch.from_numpy(labels.astype(np.int64))
  frozen = MODES[mode]
  if frozen is None:
    net.eval()
    head.eval()

    def run(n):
      start = time.perf_counter()
      with torch.inference_mode():
        for _ in range(n):
          head(net(x))
      return time.perf_counter() - start
    run(2)
    return run

  blocks = [net.conv_block1, net.conv_block2, net.conv_block3, net.conv_block4]
  params = list(head.parameters())
  for name, block in zip(BLOCKS, blocks):
    train = name not in frozen
    block.requires_grad_(train)
    if train:
      params += list(block.parameters())
  opt = torch.optim.Adam(params, lr=LR)

  def set_modes():
    net.train()
    head.train()
    for name, block in zip(BLOCKS, blocks):
      if name in frozen:
        block.eval()   # BatchNorm on running averages, as jaxaudio's frozen blocks

  def run(n):
    set_modes()
    start = time.perf_counter()
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      loss = F.cross_entropy(head(net(x)), y)
      loss.backward()
      opt.step()
    return time.perf_counter() - start
  run(2)
  return run


# ---------------------------------------------------------------- driver


def compare(modes, batch: int, steps: int, rounds: int, threads: int,
            mixed_precision: bool = False) -> list[dict]:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  info = get_model("aisfx")
  rng = np.random.default_rng(0)
  mel = rng.uniform(0, 1, (batch, info.spec.frames_per_window, info.spec.n_mels)
                    ).astype(np.float32)
  labels = (np.arange(batch) % NUM_CLASSES).astype(np.int32)
  peak = matmul_peak()
  top = max(peak.values())
  print(f"float32 matmul peak (2048^3): jaxaudio {peak['jaxaudio']:.0f} GFLOP/s, "
        f"pytorch {peak['pytorch']:.0f} GFLOP/s", flush=True)
  rows = []
  for mode in modes:
    jax_run, flops = jax_runner(mode, batch, mel, labels, mixed_precision)
    runners = {"jaxaudio": jax_run, "pytorch": torch_runner(mode, batch, mel, labels)}
    rates = {k: [] for k in runners}
    for _ in range(rounds):
      for k, run in runners.items():
        time.sleep(SETTLE_S)   # the other framework's idle worker threads stop spinning
        rates[k].append(batch * steps / run(steps))
    row = {"mode": mode, **{k: statistics.median(v) for k, v in rates.items()},
           **{f"{k}_range": (min(v), max(v)) for k, v in rates.items()}}
    row["ratio"] = row["jaxaudio"] / row["pytorch"]
    row["gflop_per_example"] = flops / 1e9
    row["peak_gflops"] = top
    for k in runners:
      row[f"{k}_peak_fraction"] = row[k] * flops / 1e9 / top
    rows.append(row)
    print(f"{mode:8s} jaxaudio {row['jaxaudio']:6.1f} ex/s "
          f"({row['jaxaudio_range'][0]:.1f}-{row['jaxaudio_range'][1]:.1f})  "
          f"pytorch {row['pytorch']:6.1f} ex/s "
          f"({row['pytorch_range'][0]:.1f}-{row['pytorch_range'][1]:.1f})  "
          f"ratio {row['ratio']:.2f}x; {row['gflop_per_example']:.2f} GFLOP/example: "
          f"{row['jaxaudio_peak_fraction']:.0%} / {row['pytorch_peak_fraction']:.0%} of the "
          f"matmul peak", flush=True)
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  ap.add_argument("--modes", default=",".join(MODES))
  ap.add_argument("--mixed_precision", action="store_true",
                  help="jaxaudio computes in bfloat16 (train.mixed_precision); PyTorch float32")
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  modes = args.modes.split(",")
  unknown = [m for m in modes if m not in MODES]
  if unknown:
    sys.exit(f"compare_torch: unknown mode {unknown[0]!r}; use some of {','.join(MODES)}.")
  print(f"aiSFX, batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds of "
        f"{args.steps} steps{'; jaxaudio in bfloat16' if args.mixed_precision else ''}; jax {jax.__version__} ({jax.default_backend()})", flush=True)
  rows = compare(modes, args.batch, args.steps, args.rounds, args.threads,
                 args.mixed_precision)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"batch": args.batch, "threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
