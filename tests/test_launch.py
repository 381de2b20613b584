"""Shipped configs validate, and the launch scripts assemble the commands they promise."""

import os
import subprocess

import pytest

from jaxaudio.runs import configs
from jaxaudio.runtime.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name", ["finetune", "folder", "esc50", "panns_cnn14_gpu", "tpu_pod"])
def test_shipped_configs_validate(name, tmp_path):
  cfg = load(name)
  if cfg.model.checkpoint:
    with pytest.raises(ConfigError, match=r"model.checkpoint='Cnn14_mAP=0.431.pth' is invalid; "
                                          "no such file"):
      configs.validate(cfg)
    cfg.model.checkpoint = str(tmp_path / "Cnn14_mAP=0.431.pth")
    open(cfg.model.checkpoint, "wb").close()
  configs.validate(cfg)
  if name in ("panns_cnn14_gpu", "tpu_pod"):
    assert cfg.train.mixed_precision and cfg.model.name == "panns_cnn14"
    assert cfg.train.batch_size % 8 == 0


def dry_run(script, *args, **env):
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, DRY_RUN="1", **env))
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_tpu_pod_script_runs_the_same_distributed_command_on_every_host():
  out = dry_run("tpu_pod.sh", "train", "--config.data.source=folder:/data/x y",
                TPU_NAME="pod", ZONE="us-central2-b", PROJECT="proj")
  assert out.startswith("gcloud compute tpus tpu-vm ssh pod --worker=all")
  assert "--zone=us-central2-b --project=proj" in out
  cmd = out.split("--command=", 1)[1]
  for part in ("jaxaudio.main", "--distributed", "--config=configs/tpu_pod.py",
               "folder:/data/x"):
    assert part in cmd
  assert "create pod --accelerator-type=v4-32" in dry_run("tpu_pod.sh", "create",
                                                          TPU_NAME="pod", ZONE="z")
  bad = subprocess.run(["bash", "launch/tpu_pod.sh", "train"], cwd=ROOT, capture_output=True,
                       text=True, env={k: v for k, v in os.environ.items() if k != "TPU_NAME"})
  assert bad.returncode != 0 and "set TPU_NAME" in bad.stderr


def test_gpu_script_single_host_and_slurm():
  single = dry_run("gpu.sh", "/runs/a", "--config.train.num_steps=5")
  assert single.split() == ["python", "-m", "jaxaudio.main", "--config=configs/panns_cnn14_gpu.py",
                            "--workdir=/runs/a", "--config.train.num_steps=5"]
  slurm = dry_run("gpu.sh", "/runs/a", SLURM_NTASKS="4").split()
  assert slurm[:2] == ["srun", "--kill-on-bad-exit=1"] and "--distributed" in slurm
  assert slurm.index("--distributed") > slurm.index("jaxaudio.main")


def test_local_script_runs_n_processes_of_one_job():
  out = dry_run("local.sh", "3", "/runs/pod", "--config.train.num_steps=5", PORT="4567").split("\n")
  cmds = [line.split() for line in out if line]
  assert len(cmds) == 3
  for i, cmd in enumerate(cmds):
    assert cmd[:4] == ["python", "-m", "jaxaudio.main", "--config=configs/finetune.py"]
    assert cmd[4:] == ["--workdir=/runs/pod", "--coordinator=127.0.0.1:4567",
                       "--num_processes=3", f"--process_id={i}", "--config.train.num_steps=5"]
  bad = subprocess.run(["bash", "launch/local.sh", "two", "/runs/pod"], cwd=ROOT,
                       capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.startswith("error: N=two is not a positive number")


def test_explicit_process_flags_are_checked_before_any_work(cli):
  partial = cli("jaxaudio.main", "--coordinator=127.0.0.1:1", "--num_processes=2")
  assert partial.returncode == 2
  assert partial.stderr.strip().endswith("--coordinator, --num_processes and --process_id go "
                                         "together; give all three, or none to detect the "
                                         "cluster (TPU pod, SLURM).")
  outside = cli("jaxaudio.main", "--coordinator=127.0.0.1:1", "--num_processes=2",
                "--process_id=2")
  assert outside.returncode == 2
  assert outside.stderr.strip().endswith("--process_id=2 is not in 0..1; number the processes "
                                         "from 0.")
