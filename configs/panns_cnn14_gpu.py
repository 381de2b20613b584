"""PANNs Cnn14 (AudioSet-pretrained, 80 M parameters) fine-tuned on one or more GPUs.

Download Cnn14_mAP=0.431.pth from the PANNs release (zenodo.org/record/3987831) and point
model.checkpoint at it; it is converted once and cached. Your data: data.source.

  python -m jaxaudio.main --config=configs/panns_cnn14_gpu.py --workdir=runs/cnn14 \\
      --config.model.checkpoint=/models/Cnn14_mAP=0.431.pth \\
      --config.data.source=folder:/data/my_clips

bfloat16 compute with float32 parameters (mixed_precision); bn0 and blocks 1-4 frozen,
blocks 5-6, fc1 and the head trained together at 1e-4 (the default recipe's shape; not
measured on Cnn14 from here); batch 64 split over every local GPU
(jit over a device mesh); 8 grain worker processes keep the GPUs fed.
"""

from jaxaudio.runs.configs import base_config


def get_config():
  c = base_config()
  c.model.name = "panns_cnn14"
  c.model.checkpoint = "Cnn14_mAP=0.431.pth"
  c.data.source = "folder:clips"
  c.data.loader_workers = 8
  c.train.update(num_steps=3000, batch_size=64, warmup_steps=150, eval_every=250,
                 log_every=50, checkpoint_keep=3, mixed_precision=True,
                 early_stop_patience=4)
  c.train.param_groups = (("^backbone/(bn0|block1|block2|block3|block4)/", "frozen"),
                          ("^backbone/", "backbone"),
                          ("^head/", "head"))
  c.parallel = "jit"
  return c
