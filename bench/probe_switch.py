"""Why a linear probe's accuracy collapses when fine-tuning starts: the probe's weights on
the training windows under each condition of the fine-tuning step, one at a time.

  python bench/probe_switch.py --workdir=RUN --step=1200   # RUN trained with train.probe_steps

Evaluation mode (how the probe was trained, on cached embeddings) against: the training
forward with the unfrozen blocks' BatchNorm on running averages or on batch statistics, and
each input augmentation of the run's config (gain, time shift, time masks, mel masks).
Prints a Markdown table of accuracies (the README's LP-FT paragraph).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxaudio.audio.frontend import silence_value
from jaxaudio.data.prepare import prepare
from jaxaudio.models.head import EmbeddingClassifier
from jaxaudio.models.registry import finetune_backbone
from jaxaudio.train import augment as aug
from jaxaudio.runs import rundir


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, required=True, help="the probe's last checkpoint")
  parser.add_argument("--frozen", default="block1,block2,block3",
                      help="blocks the fine-tuning stage keeps frozen")
  args = parser.parse_args()
  run = rundir.open_run(args.workdir, args.step)
  info, spec = run.info, run.info.spec
  prepared, _ = prepare(run.cfg.data, spec, progress=False)
  src = prepared.data_source("train")
  x = np.stack([np.asarray(src[i]["mel"], np.float32) for i in range(len(src))])
  y = np.array([int(src[i]["label"]) for i in range(len(src))])
  frozen = tuple(args.frozen.split(","))
  a = run.cfg.train.augment
  silence = silence_value(spec)

  def accuracy(transform, running: bool = True, train: bool = True, reps: int = 3) -> float:
    model = EmbeddingClassifier(finetune_backbone(
        info, frozen=frozen, running_bn=info.layer_groups if running else ()), len(run.classes))
    if train:
      fn = jax.jit(lambda v, xb: model.apply(v, xb, train=True, mutable=["batch_stats"])[0])
    else:
      fn = jax.jit(lambda v, xb: model.apply(v, xb))
    hits = []
    for r in range(reps if transform else 1):
      for s in range(0, len(x), 32):
        xb = jnp.asarray(x[s:s + 32])
        if transform:
          xb = transform(jax.random.PRNGKey(1000 * r + s), xb)
        hits.append(np.asarray(jnp.argmax(fn(run.variables, xb)["logits"], -1)) == y[s:s + 32])
    return float(np.concatenate(hits).mean())

  no_mixup = ml_collections.ConfigDict({**a.to_dict(), "mixup_alpha": 0.0})
  rows = {
      "evaluation mode (the probe as trained)": accuracy(None, train=False),
      "training forward, BatchNorm on running averages": accuracy(None),
      "training forward, unfrozen BatchNorm on batch statistics": accuracy(None, running=False),
      f"gain +-{a.gain_db} dB": accuracy(lambda k, v: aug.random_gain(k, v, spec, a.gain_db)),
      f"time shift {a.time_shift}": accuracy(lambda k, v: aug.time_shift(k, v, a.time_shift)),
      f"time masks {a.time_masks}x{a.time_mask_width}": accuracy(
          lambda k, v: aug.spec_augment(k, v, a.time_masks, a.time_mask_width, 1, silence)),
      f"mel masks {a.freq_masks}x{a.freq_mask_width}": accuracy(
          lambda k, v: aug.spec_augment(k, v, a.freq_masks, a.freq_mask_width, 2, silence)),
      "all input augmentations, batch statistics": accuracy(
          lambda k, v: aug.augment(k, v, jnp.zeros((v.shape[0], len(run.classes))), no_mixup,
                                   spec, silence)[0], running=False),
  }
  print(f"| condition ({len(x)} training windows, step {args.step}) | accuracy |\n|---|---:|")
  for name, value in rows.items():
    print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
  main()
