"""Model registry: name -> backbone, FrontendSpec, layer groups and original-weight layout."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.errors import UnknownModelError
from jaxaudio.models import aisfx, panns
from jaxaudio.models.init import init_variables

# aiSFX: the Essentia path of aisfx/inference.py (44.1 kHz, 2048/1024, Hann, 96 HTK mel
# bands with unit-sum weights over 0-22050 Hz, power, log10(1e4 x + 1), min-max 0..9.4578).
AISFX_SPEC = FrontendSpec(
    sample_rate=44100, n_fft=2048, hop_length=1024, n_mels=96, fmin=0.0, fmax=22050.0,
    framing="essentia", window="hann_symmetric", mel_filters="essentia_htk_unit_sum",
    compression="log10_shift_scale", frames_per_window=100, log_scale=1e4, log_shift=1.0,
    norm_min=0.0, norm_max=9.457798957824707)

# PANNs: torchlibrosa Spectrogram(center, reflect, periodic Hann) + LogmelFilterBank
# (librosa Slaney mel 50-14000 Hz, 10 log10 with ref 1, amin 1e-10, no top_db); 10 s clips.
PANNS_SPEC = FrontendSpec(
    sample_rate=32000, n_fft=1024, hop_length=320, n_mels=64, fmin=50.0, fmax=14000.0,
    framing="center_reflect", window="hann_periodic", mel_filters="slaney",
    compression="power_to_db", frames_per_window=1001, db_ref=1.0, db_amin=1e-10)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What the rest of jaxaudio needs to know about one pretrained model."""

  name: str
  spec: FrontendSpec
  embedding_dim: int
  layer_groups: tuple[str, ...]          # forward order; configs freeze these by name
  build: Callable[..., nn.Module]        # build(frozen=(), dtype=, widths=, bn_axis_name=)
  torch_prefix: str                      # where the embedding net sits in the state dict
  torch_ignore: tuple[str, ...]          # regexes of original tensors that are not converted
  pretrained_only: tuple[str, ...] = ()  # subtrees dropped when a fresh head replaces them
  source: str = "path"                   # "aisfx_package" or "path"
  description: str = ""

  def init_variables(self, rng: jax.Array | None = None, frames: int | None = None,
                     **build_kwargs) -> dict[str, Any]:
    """Fresh variables of the backbone for an input of `frames` frames (default: native)."""
    module = self.build(**build_kwargs)
    frames = frames or self.spec.frames_per_window
    x = jnp.zeros((1, frames, self.spec.n_mels), jnp.float32)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return init_variables(module, rng, x)


def _panns(arch: str, default_audioset_head: bool = True):
  def build(frozen=(), dtype=jnp.float32, widths=None, audioset_head=default_audioset_head,
            bn_axis_name=None, running_bn=()):
    return panns.Panns(arch=arch, widths=widths, audioset_head=audioset_head,
                       frozen=tuple(frozen), dtype=dtype, bn_axis_name=bn_axis_name,
                       running_bn=tuple(running_bn))
  return build


def _aisfx(frozen=(), dtype=jnp.float32, widths=None, bn_axis_name=None, running_bn=()):
  return aisfx.AiSFX(widths=tuple(widths or (64, 128, 256, 512)), frozen=tuple(frozen),
                     dtype=dtype, bn_axis_name=bn_axis_name, running_bn=tuple(running_bn))


_PANNS_IGNORE = (r"^spectrogram_extractor\.", r"^logmel_extractor\.", r"num_batches_tracked$")

MODELS: dict[str, ModelInfo] = {
    "aisfx": ModelInfo(
        name="aisfx", spec=AISFX_SPEC, embedding_dim=512, layer_groups=aisfx.LAYER_GROUPS,
        build=_aisfx, torch_prefix="embedding_net.",
        torch_ignore=(r"^fc\.", r"num_batches_tracked$"), source="aisfx_package",
        description="aiSFX X-Sequential-CE sound-effects embedding (ISMIR 2022), 512-d"),
    **{
        f"panns_{arch}": ModelInfo(
            name=f"panns_{arch}", spec=PANNS_SPEC, embedding_dim=panns.ARCHS[arch].widths[-1],
            layer_groups=panns.ARCHS[arch].layer_groups, build=_panns(arch), torch_prefix="",
            torch_ignore=_PANNS_IGNORE, pretrained_only=("fc_audioset",),
            description=f"PANNs {arch.capitalize()} AudioSet tagging CNN (Kong et al. 2020)")
        for arch in ("cnn14", "cnn10", "cnn6")
    },
}


def finetune_backbone(info: ModelInfo, **kwargs) -> nn.Module:
  """The backbone as fine-tuning uses it: pretrained-only heads (PANNs' AudioSet layer) off."""
  if "fc_audioset" in info.pretrained_only:
    kwargs.setdefault("audioset_head", False)
  return info.build(**kwargs)


def get_model(name: str) -> ModelInfo:
  if name in MODELS:
    return MODELS[name]
  close = difflib.get_close_matches(name, MODELS, n=1)
  hint = f"did you mean '{close[0]}'? " if close else ""
  raise UnknownModelError(f"unknown model '{name}'; {hint}known models: {', '.join(MODELS)}.")


def param_count(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))
