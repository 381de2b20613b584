"""ESC-50 with its own folds: point data.source at meta/esc50.csv; fold 5 tests, fold 4 validates.

  python -m jaxaudio.prepare --config=configs/esc50.py \
      --config.data.source=csv:/path/to/ESC-50/meta/esc50.csv --config.data.test_folds=1,
"""

from jaxaudio.runs.configs import base_config


def get_config():
  c = base_config()
  c.data.source = "csv:ESC-50-master/meta/esc50.csv"
  c.data.validation_folds = (4,)
  c.data.test_folds = (5,)
  return c
