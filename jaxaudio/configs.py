"""`from jaxaudio.configs import base_config`: the import every config file has used, kept.

The defaults and their validation live in jaxaudio/runs/configs.py; this name stays because
users' own config files (copies of configs/*.py) import it. New code imports jaxaudio.runs.
"""

from jaxaudio.runs.configs import base_config, validate  # noqa: F401  (re-exported)

__all__ = ["base_config", "validate"]
