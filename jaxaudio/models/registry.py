"""Model registry: name -> backbone, FrontendSpec, layer groups and original-weight layout."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.runtime.errors import UnknownModelError
from jaxaudio.models import aisfx, musicnn, panns
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

# musicnn / vgg: librosa.feature.melspectrogram as the musicnn package calls it (16 kHz, 512/256,
# centred with reflect padding as librosa < 0.10 did, periodic Hann, 96 Slaney mels 0-8000 Hz,
# power 2), then log10(10000 x + 1) -- in float64 here, where the package's float16 overflows
# to inf once a mel band's power passes 6.55; 187-frame (3 s) patches.
MUSICNN_SPEC = FrontendSpec(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, fmin=0.0, fmax=8000.0,
    framing="center_reflect", window="hann_periodic", mel_filters="slaney",
    compression="log10_shift_scale", frames_per_window=187, log_scale=1e4, log_shift=1.0)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What the rest of jaxaudio needs to know about one pretrained model."""

  name: str
  spec: FrontendSpec
  embedding_dim: int
  layer_groups: tuple[str, ...]          # forward order; configs freeze these by name
  build: Callable[..., nn.Module]        # build(frozen=(), dtype=, widths=, bn_axis_name=,
                                         #       running_bn=, pretrained_head=)
  torch_prefix: str = ""                 # where the embedding net sits in the state dict
  torch_ignore: tuple[str, ...] = ()     # regexes of original tensors that are not converted
  tf_scopes: Mapping[tuple[str, ...], str] | None = None  # set: the original is a TF1 checkpoint
  pretrained_only: tuple[str, ...] = ()  # subtrees dropped when a fresh head replaces them
  source: str = "path"                   # "aisfx_package", "musicnn_package" or "path"
  package_member: str = ""               # the model's folder inside its package
  tag_names: tuple[str, ...] = ()        # outputs of the pretrained tag layer, if it has one
  default_frozen: tuple[str, ...] = ()   # layer groups the default recipe keeps frozen
  description: str = ""
  license: str = ""                      # of the original weights; kept with conversions

  @property
  def original_format(self) -> str:
    return "tf1" if self.tf_scopes is not None else "torch"

  def init_variables(self, rng: jax.Array | None = None, frames: int | None = None,
                     **build_kwargs) -> dict[str, Any]:
    """Fresh variables of the backbone for an input of `frames` frames (default: native)."""
    module = self.build(**build_kwargs)
    frames = frames or self.spec.frames_per_window
    x = jnp.zeros((1, frames, self.spec.n_mels), jnp.float32)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return init_variables(module, rng, x)


def _panns(arch: str):
  def build(frozen=(), dtype=jnp.float32, widths=None, pretrained_head=True, bn_axis_name=None,
            running_bn=()):
    return panns.Panns(arch=arch, widths=widths, audioset_head=pretrained_head,
                       frozen=tuple(frozen), dtype=dtype, bn_axis_name=bn_axis_name,
                       running_bn=tuple(running_bn))
  return build


def _aisfx(frozen=(), dtype=jnp.float32, widths=None, bn_axis_name=None, running_bn=(),
           pretrained_head=False):
  del pretrained_head  # aiSFX's classifier (`fc`) is never converted
  return aisfx.AiSFX(widths=tuple(widths or (64, 128, 256, 512)), frozen=tuple(frozen),
                     dtype=dtype, bn_axis_name=bn_axis_name, running_bn=tuple(running_bn))


def _musicnn(frozen=(), dtype=jnp.float32, widths=None, bn_axis_name=None, running_bn=(),
             pretrained_head=True):
  return musicnn.Musicnn(widths=tuple(widths or musicnn.MUSICNN_WIDTHS), tags=pretrained_head,
                         frozen=tuple(frozen), dtype=dtype, bn_axis_name=bn_axis_name,
                         running_bn=tuple(running_bn))


def _vgg(dataset: str):
  def build(frozen=(), dtype=jnp.float32, widths=None, bn_axis_name=None, running_bn=(),
            pretrained_head=True):
    return musicnn.Vgg(pools=musicnn.VGG_POOLS[dataset],
                       widths=tuple(widths or musicnn.VGG_WIDTHS), tags=pretrained_head,
                       frozen=tuple(frozen), dtype=dtype, bn_axis_name=bn_axis_name,
                       running_bn=tuple(running_bn))
  return build


_MUSICNN_LICENSE = ("ISC, (c) Music Technology Group, Universitat Pompeu Fabra 2019, Jordi Pons "
                    "(musicnn 0.1.0)")
_MUSIC_SETS = {"mtt": ("MTT", musicnn.MTT_TAGS, "MagnaTagATune"),
               "msd": ("MSD", musicnn.MSD_TAGS, "Million Song Dataset")}


_PANNS_IGNORE = (r"^spectrogram_extractor\.", r"^logmel_extractor\.", r"num_batches_tracked$")

MODELS: dict[str, ModelInfo] = {
    "aisfx": ModelInfo(
        name="aisfx", spec=AISFX_SPEC, embedding_dim=512, layer_groups=aisfx.LAYER_GROUPS,
        build=_aisfx, torch_prefix="embedding_net.", default_frozen=("block1",),
        torch_ignore=(r"^fc\.", r"num_batches_tracked$"), source="aisfx_package",
        license="CC BY 4.0, Ma & Lerch (aisfx 0.1.2)",
        description="aiSFX X-Sequential-CE sound-effects embedding (ISMIR 2022), 512-d"),
    **{
        f"panns_{arch}": ModelInfo(
            name=f"panns_{arch}", spec=PANNS_SPEC, embedding_dim=panns.ARCHS[arch].widths[-1],
            layer_groups=panns.ARCHS[arch].layer_groups, build=_panns(arch), torch_prefix="",
            torch_ignore=_PANNS_IGNORE, pretrained_only=("fc_audioset",),
            default_frozen=("bn0", "block1"),
            description=f"PANNs {arch.capitalize()} AudioSet tagging CNN (Kong et al. 2020)")
        for arch in ("cnn14", "cnn10", "cnn6")
    },
    **{
        f"musicnn_{ds}": ModelInfo(
            name=f"musicnn_{ds}", spec=MUSICNN_SPEC, embedding_dim=musicnn.MUSICNN_WIDTHS[-1],
            layer_groups=musicnn.MUSICNN_GROUPS, build=_musicnn,
            tf_scopes=musicnn.MUSICNN_TF_SCOPES, pretrained_only=("tags",),
            default_frozen=("frontend",),
            source="musicnn_package", package_member=f"{prefix}_musicnn", tag_names=tags,
            description=f"musicnn music tagger trained on {full} (Pons & Serra 2019), 200-d",
            license=_MUSICNN_LICENSE)
        for ds, (prefix, tags, full) in _MUSIC_SETS.items()
    },
    **{
        f"vgg_{ds}": ModelInfo(
            name=f"vgg_{ds}", spec=MUSICNN_SPEC, embedding_dim=256,
            layer_groups=musicnn.VGG_GROUPS, build=_vgg(ds), tf_scopes=musicnn.VGG_TF_SCOPES,
            default_frozen=("block1",),
            pretrained_only=("tags",), source="musicnn_package", package_member=f"{prefix}_vgg",
            tag_names=tags,
            description=f"musicnn's vgg music tagger trained on {full} (Pons & Serra 2019), "
                        "256-d", license=_MUSICNN_LICENSE)
        for ds, (prefix, tags, full) in _MUSIC_SETS.items()
    },
}


# The default recipe's frozen groups, one regex over every model's (a group name means the
# same first layers wherever it occurs): aiSFX block1, PANNs bn0 + block1, musicnn's
# front end, vgg block1.
DEFAULT_FROZEN = tuple(sorted({g for info in MODELS.values() for g in info.default_frozen},
                              key=lambda g: (g != "bn0", g)))


def finetune_backbone(info: ModelInfo, **kwargs) -> nn.Module:
  """The backbone as fine-tuning uses it: pretrained-only heads (AudioSet, music tags) off."""
  if info.pretrained_only:
    kwargs.setdefault("pretrained_head", False)
  return info.build(**kwargs)


def get_model(name: str) -> ModelInfo:
  if name in MODELS:
    return MODELS[name]
  close = difflib.get_close_matches(name, MODELS, n=1)
  hint = f"did you mean '{close[0]}'? " if close else ""
  raise UnknownModelError(f"unknown model '{name}'; {hint}known models: {', '.join(MODELS)}.")


def param_count(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))
