"""Shared fixtures: golden files, the real aiSFX checkpoint (fetched once), CLI runner."""

import os
import subprocess
import sys

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(TESTS, "golden")
sys.path.insert(0, TESTS)
sys.path.insert(0, GOLDEN)


@pytest.fixture(scope="session")
def golden():
  def load(name):
    return np.load(os.path.join(GOLDEN, name))
  return load


@pytest.fixture(scope="session")
def aisfx_checkpoint():
  """The verified aisfx==0.1.2 checkpoint: installed package, else the user cache, which
  `pip download` fills once (CI reaches the package index)."""
  from jaxaudio.weights import sources
  return sources.aisfx_checkpoint()


def run_cli(module, *args, env=None, timeout=300):
  """python -m <module> args...; returns CompletedProcess with text output."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=full_env, timeout=timeout, check=False)


@pytest.fixture
def cli():
  return run_cli
