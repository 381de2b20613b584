"""jaxaudio: fine-tune pretrained audio embedding CNNs in JAX/Flax, evaluate, and search."""

__version__ = "0.1.0"
