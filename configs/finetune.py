"""Default: fine-tune pretrained aiSFX on the built-in demo data (runs on a 2-core CPU).

Usage: python -m jaxaudio.main --config=configs/finetune.py [--config.KEY=VALUE ...]
"""

from jaxaudio.runs.configs import base_config


def get_config():
  c = base_config()
  c.model.name = "aisfx"
  c.model.init = "pretrained"
  c.data.source = "demo"
  return c
