"""The default sweep space: the recipe's learning rates, probe, unfrozen blocks, dropout,
label smoothing and augmentation.

Usage: python -m jaxaudio.sweep --config=configs/finetune.py --sweep=configs/sweeps/recipe.py
--workdir=DIR. get_sweep(config) builds the unfreezing choices from the configured model's
layer groups: the last one, two, ... of those the default recipe does not keep frozen.
"""

from jaxaudio.models.registry import get_model


def _unfreeze_choices(model_name):
  info = get_model(model_name)
  trainable = [g for g in info.layer_groups if g not in info.default_frozen and g != "tags"]
  choices = {}
  for k in range(1, len(trainable) + 1):
    last = trainable[-k:]
    choices["+".join(last)] = ((f"^backbone/({'|'.join(last)})/", "backbone"),
                               ("^backbone/", "frozen"),
                               ("^head/", "head"))
  return choices


def get_sweep(config):
  return {
      "train.learning_rate": ("loguniform", 1e-4, 3e-3),
      # the backbone's learning rate is this times train.learning_rate
      "train.group_lr_mult.backbone": ("loguniform", 0.03, 1.0),
      # head-only steps on cached embeddings before the blocks unfreeze (cheap)
      "train.probe_steps": ("choice", [0, 100, 300]),
      "train.param_groups": ("choice", _unfreeze_choices(config.model.name)),
      "train.head_dropout": ("uniform", 0.0, 0.5),
      "train.label_smoothing": ("uniform", 0.0, 0.2),
      "train.augment.enabled": ("choice", [False, True]),
      "train.augment.mixup_alpha": ("uniform", 0.0, 0.4),
      "train.augment.freq_masks": ("int", 0, 2),
      "train.augment.time_masks": ("int", 0, 2),
      "train.augment.gain_db": ("uniform", 0.0, 9.0),
  }
