"""A Cloud TPU pod slice (e.g. v4-32: 4 hosts x 4 chips): PANNs Cnn14 on ESC-50-style data.

Every host runs the same command (launch/tpu_pod.sh does it over `gcloud ... --worker=all`)
with --distributed, which calls jax.distributed.initialize(). Each host prepares the data
into its own cache (or one shared by all hosts: builds are host-tagged and the first
complete one wins), reads its own shard of every batch, and saves its part of each
checkpoint; only host 0 writes TensorBoard summaries and the report. Put --workdir on a
filesystem every host sees (a GCS bucket mounted with gcsfuse, or Filestore).

  python -m jaxaudio.main --distributed --config=configs/tpu_pod.py --workdir=/mnt/runs/cnn14 \\
      --config.model.checkpoint=/mnt/models/Cnn14_mAP=0.431.pth \\
      --config.data.source=csv:/mnt/data/ESC-50-master/meta/esc50.csv

Global batch 512 (a multiple of the chip count, divided over hosts then chips), bfloat16
compute, jit over the global device mesh.
"""

from jaxaudio.runs.configs import base_config


def get_config():
  c = base_config()
  c.model.name = "panns_cnn14"
  c.model.checkpoint = "Cnn14_mAP=0.431.pth"
  c.data.source = "csv:ESC-50-master/meta/esc50.csv"
  c.data.validation_folds = (4,)
  c.data.test_folds = (5,)
  c.data.loader_workers = 16
  # The default recipe's shape (backbone and head together, constant rate) with the rate
  # scaled for a 16x larger batch and a warmup; not measured on a pod from here.
  c.train.update(num_steps=4000, batch_size=512, learning_rate=1e-3, warmup_steps=200,
                 eval_every=250, log_every=50, checkpoint_keep=3, mixed_precision=True,
                 early_stop_patience=4)
  c.train.param_groups = (("^backbone/(bn0|block1|block2|block3)/", "frozen"),
                          ("^backbone/", "backbone"),
                          ("^head/", "head"))
  c.parallel = "jit"
  return c
