"""Convert original PyTorch weights to a Flax orbax checkpoint, without torch.

  python -m jaxaudio.convert --model=aisfx --out=DIR
  python -m jaxaudio.convert --model=panns_cnn14 --checkpoint=Cnn14_mAP=0.431.pth --out=DIR
"""

from __future__ import annotations

import json

from absl import flags

from jaxaudio.runtime import cli
from jaxaudio.models.registry import get_model
from jaxaudio.weights import pretrained

_MODEL = flags.DEFINE_string("model", None, "Model name, e.g. aisfx or panns_cnn14.",
                             required=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Original .pth file; aisfx defaults to the aisfx==0.1.2 wheel's file.")
_OUT = flags.DEFINE_string("out", None, "Directory for the converted orbax checkpoint.",
                           required=True)


def main(argv):
  del argv
  info = get_model(_MODEL.value)
  meta = pretrained.convert_to(info, _OUT.value, _CHECKPOINT.value)
  print(json.dumps({k: meta[k] for k in ("model", "source", "source_sha256", "param_count",
                                         "frontend_fingerprint", "convert_seconds")}))
  return 0


if __name__ == "__main__":
  cli.run(main)
