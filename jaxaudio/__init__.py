"""jaxaudio: fine-tune pretrained audio embedding CNNs in JAX/Flax, evaluate, and search."""

import os

# TensorFlow only writes TFDS files and TensorBoard events here; its C++ notices (oneDNN,
# log-before-InitializeLog) say nothing a user can act on. Set before any module imports it
# (this package's modules import it at the top); a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
