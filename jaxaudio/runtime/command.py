"""The first import of every command that may run a model: XLA:CPU's options are set here,
before JAX starts a backend, and the command-line plumbing is handed on.

  from jaxaudio.runtime.command import cli   # a command's first jaxaudio import

XLA reads XLA_FLAGS once, when JAX creates its first backend (xla_cpu.py says which kernels
and why), so this must be imported before anything that computes with JAX; importing JAX
itself starts no backend. Libraries never import this module: only commands set
process-wide options.
"""

from jaxaudio.runtime import xla_cpu

xla_cpu.apply()

from jaxaudio.runtime import cli  # noqa: E402  pylint: disable=wrong-import-position

__all__ = ["cli"]
