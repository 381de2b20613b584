"""Where original weights come from, and proof that they are the files we expect.

aiSFX: the `aisfx` wheel carries aisfx/models/checkpoint.pth (CC BY 4.0). We take it from an
installed copy (located through package metadata, never imported: aisfx imports torch), else
from `pip download --no-deps aisfx==0.1.2` into the cache, else from a path the user gives.
PANNs: the official checkpoints are on Zenodo (README); the user passes their path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile

from jaxaudio.errors import CheckpointError
from jaxaudio.models.registry import ModelInfo

AISFX_REQUIREMENT = "aisfx==0.1.2"
AISFX_MEMBER = "aisfx/models/checkpoint.pth"
AISFX_SHA256 = "499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5"


def cache_dir() -> str:
  """$JAXAUDIO_CACHE, else the user's cache directory (e.g. ~/.cache/jaxaudio)."""
  env = os.environ.get("JAXAUDIO_CACHE")
  if env:
    return os.path.abspath(env)
  import platformdirs  # pylint: disable=import-outside-toplevel
  return platformdirs.user_cache_dir("jaxaudio")


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def installed_aisfx_checkpoint() -> str | None:
  try:
    dist = importlib.metadata.distribution("aisfx")
  except importlib.metadata.PackageNotFoundError:
    return None
  path = os.fspath(dist.locate_file(AISFX_MEMBER))
  return path if os.path.isfile(path) and sha256_file(path) == AISFX_SHA256 else None


def _download_aisfx(dest: str) -> None:
  """pip download the aisfx wheel (no dependencies) and extract the checkpoint to `dest`."""
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(dest)) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", tmp, AISFX_REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if proc.returncode != 0 or not wheels:
      raise CheckpointError(
          f"could not fetch the aiSFX weights with `pip download --no-deps {AISFX_REQUIREMENT}` "
          f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel'}); "
          "connect to the package index or pass --checkpoint=PATH to checkpoint.pth.")
    part = dest + ".part"
    with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf, open(part, "wb") as out:
      out.write(zf.read(AISFX_MEMBER))
    if sha256_file(part) != AISFX_SHA256:
      os.remove(part)
      raise CheckpointError(f"the downloaded {AISFX_REQUIREMENT} checkpoint has an unexpected "
                            "sha256; check your package index mirror.")
    os.replace(part, dest)  # atomic: a killed download never leaves a file that looks done


def aisfx_checkpoint() -> str:
  """Path to the verified aiSFX checkpoint: installed package, else cache (fetch once)."""
  installed = installed_aisfx_checkpoint()
  if installed:
    return installed
  cached = os.path.join(cache_dir(), "originals", "aisfx-0.1.2", "checkpoint.pth")
  if not (os.path.isfile(cached) and sha256_file(cached) == AISFX_SHA256):
    _download_aisfx(cached)
  return cached


def resolve_original(info: ModelInfo, checkpoint: str | None) -> tuple[str, str]:
  """(path, sha256) of the original weights for `info`; `checkpoint` overrides the default."""
  if checkpoint:
    if not os.path.isfile(checkpoint):
      raise CheckpointError(f"{checkpoint}: no such checkpoint file; check --checkpoint.")
    return checkpoint, sha256_file(checkpoint)
  if info.source == "aisfx_package":
    path = aisfx_checkpoint()
    return path, AISFX_SHA256
  raise CheckpointError(f"model '{info.name}' needs --checkpoint=PATH to its official PyTorch "
                        "checkpoint (README lists where to download it).")
