"""The plain fine-tune a ten-line PyTorch script does: the reference recipe of issue 10.

Blocks 1-2 frozen; blocks 3-4 and a fresh head trained together from the start with Adam at
a constant 1e-4, batch 32, 6 epochs; no linear probe, no augmentation, no dropout, no weight
decay, no gradient clipping, no warmup. Shipped so the recipe benchmark (bench/recipes.py)
compares the default with it on the same code.

Usage: python -m jaxaudio.main --config=configs/plain_finetune.py --config.data.source=...
"""

from jaxaudio.runs.configs import base_config


def get_config():
  c = base_config()
  t = c.train
  t.probe_steps = 0
  t.num_steps = 0               # from epochs
  t.epochs = 6.0
  t.param_groups = (("^backbone/(bn0|block1|block2)/", "frozen"), ("^backbone/", "backbone"),
                    ("^head/", "head"))
  t.learning_rate = 1e-4
  t.group_lr_mult = {"head": 1.0, "backbone": 1.0}
  t.warmup_steps = 0
  t.final_lr_fraction = 1.0     # constant learning rate
  t.weight_decay = 0.0
  t.grad_clip_norm = 0.0
  t.head_dropout = 0.0
  t.augment.enabled = False
  return c
