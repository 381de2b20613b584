"""A user's folder of clips: PATH/<class>/* or PATH/{train,validation,test}/<class>/*.

  python -m jaxaudio.prepare --config=configs/folder.py --config.data.source=folder:/my/clips
"""

from jaxaudio.runs.configs import base_config


def get_config():
  c = base_config()
  c.data.source = "folder:clips"
  c.data.denoise = 0.0
  return c
