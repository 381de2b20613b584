"""The README's main job as a user runs it: `python -m jaxaudio.main --config=configs/finetune.py`
(pretrained full-width aiSFX on the built-in demo), the same job from weights converted by
`python -m jaxaudio.convert` (`model.init=DIR`), `python -m jaxaudio.exported` on its run, and
`python -m jaxaudio.search index --rebuild` with that export. Real commands in subprocesses
with the real aiSFX weights; a few steps and a few demo clips per class keep it to seconds."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from datafixtures import saved_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo at 2 train, 1 validation and 1 test clip per class (10 classes); two steps.
SMALL = ["--config.data.demo.clips_per_class.train=2",
         "--config.data.demo.clips_per_class.validation=1",
         "--config.data.demo.clips_per_class.test=1",
         "--config.train.num_steps=2", "--config.train.eval_every=2",
         "--config.train.log_every=1", "--config.train.batch_size=8"]


def _run(env, *args):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def job(tmp_path_factory, aisfx_checkpoint):
  """A cache of its own (the demo is synthesised and prepared there, the pretrained weights
  converted there) holding the verified aiSFX checkpoint, and the README job's run in it."""
  tmp = tmp_path_factory.mktemp("mainjob")
  cache = tmp / "cache"
  originals = cache / "originals" / "aisfx-0.1.2"
  originals.mkdir(parents=True)
  os.symlink(aisfx_checkpoint, originals / "checkpoint.pth")
  env = dict(os.environ, JAXAUDIO_CACHE=str(cache))
  workdir = str(tmp / "readme")
  r = _run(env, "jaxaudio.main", "--config=configs/finetune.py", f"--workdir={workdir}", *SMALL)
  return {"tmp": tmp, "cache": cache, "env": env, "workdir": workdir, "result": r}


@pytest.mark.network   # the aiSFX wheel, fetched once into the cache
def test_the_readme_job_fine_tunes_pretrained_full_width_aisfx_on_the_demo(job):
  r = job["result"]
  assert r.returncode == 0, r.stderr[-3000:]
  assert "initialised the backbone from checkpoint.pth (sha256 499ea75909c9" in r.stderr
  # Full width: blocks 2-4 train (4.6 M parameters), block 1 frozen, a 10-class head.
  assert "backbone: 18 tensors, 4,648,448 params" in r.stderr
  assert "frozen: 6 tensors, 37,696 params (backbone/block1)" in r.stderr
  assert "head: 2 tensors, 5,130 params (head)" in r.stderr
  assert "step 2/2: " in r.stderr and "validation at step 2: macro_f1=" in r.stderr
  workdir = job["workdir"]
  metrics = json.load(open(f"{workdir}/report/test_metrics.json"))
  assert metrics["num_examples"] == 10 and metrics["best_step"] == 2
  assert len(metrics["per_class"]) == 10 and 0.0 <= metrics["accuracy"] <= 1.0
  evaluation = json.load(open(f"{workdir}/report/evaluation.json"))
  assert evaluation["step"] == 2 and evaluation["split"] == "test"
  assert evaluation["classification"]["accuracy"] == pytest.approx(metrics["accuracy"])
  assert f"report: {workdir}/report" in r.stdout
  assert json.loads(r.stdout.strip().splitlines()[-2])["num_examples"] == 10
  # The frozen block is the pretrained one, bitwise, after training (read from the weights
  # file itself with the torch-free reader, not through the converter).
  from jaxaudio.weights import pth
  state_dict = pth.load_pth(os.path.join(job["cache"], "originals", "aisfx-0.1.2",
                                         "checkpoint.pth"))[0]
  kernel = saved_state(workdir, 2)["params"]["backbone"]["block1"]["conv1"]["kernel"]
  conv = np.asarray(state_dict["embedding_net.conv_block1.conv1.weight"])
  np.testing.assert_array_equal(kernel, np.transpose(conv, (2, 3, 1, 0)))   # OIHW -> HWIO


@pytest.mark.network   # the aiSFX wheel, fetched once into the cache
def test_a_converted_checkpoint_as_model_init_starts_where_pretrained_starts(job):
  """convert, then the same job with model.init=DIR: the same run, bitwise."""
  out = str(job["tmp"] / "converted")
  r = _run(job["env"], "jaxaudio.convert", "--model=aisfx", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  meta = json.loads(r.stdout.strip().splitlines()[-1])
  assert meta["model"] == "aisfx" and meta["source_sha256"].startswith("499ea75909c9")
  workdir = str(job["tmp"] / "from_converted")
  r = _run(job["env"], "jaxaudio.main", "--config=configs/finetune.py", f"--workdir={workdir}",
           f"--config.model.init={out}", "--config.evaluate.at_end=False", *SMALL)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"initialised the backbone from {out}" in r.stderr or \
      "initialised the backbone from checkpoint.pth (sha256 499ea75909c9" in r.stderr, r.stderr
  a, b = saved_state(job["workdir"], 2), saved_state(workdir, 2)
  import jax
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb) > 20
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


@pytest.mark.network   # the aiSFX wheel, fetched once into the cache
def test_exported_cli_and_search_index_rebuild(job):
  """`jaxaudio.exported` writes a model that computes what the run computes; an index built
  with the run's starting weights refuses that model until `--rebuild`, then holds it."""
  from jaxaudio.inference import exported
  from jaxaudio.evaluation import heldout
  from jaxaudio.runs.rundir import open_run
  from jaxaudio.search import store
  env, workdir = job["env"], job["workdir"]
  out = str(job["tmp"] / "export")
  r = _run(env, "jaxaudio.exported", f"--workdir={workdir}", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  meta = json.loads(r.stdout.strip().splitlines()[-2])
  assert meta["model"] == "aisfx" and meta["step"] == 2 and meta["embedding_dim"] == 512
  assert r.stdout.strip().splitlines()[-1] == f"exported: {out}"
  model = exported.load(out)
  mel = np.random.default_rng(0).uniform(0, 1, (3, 100, 96)).astype(np.float32)
  run = open_run(workdir)
  want = heldout.apply_fn(run, run.variables)(mel)
  got = model(mel)
  np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4)
  np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-4)

  audio = next(str(p) for p in (job["cache"] / "demo").glob("demo-*/test"))
  index = str(job["tmp"] / "index")
  r = _run(env, "jaxaudio.search", "index", f"--index={index}", f"--workdir={workdir}",
           "--step=start", f"--audio={audio}", "--workers=1")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"index {index}: 10 files" in r.stdout
  before = store.read_manifest(index).model["weights_sha256"]
  assert before != meta["weights_sha256"]
  r = _run(env, "jaxaudio.search", "index", f"--index={index}", f"--model={out}",
           f"--audio={audio}", "--workers=1")
  assert r.returncode == 2 and "--rebuild" in r.stderr and "Traceback" not in r.stderr
  r = _run(env, "jaxaudio.search", "index", f"--index={index}", f"--model={out}",
           f"--audio={audio}", "--workers=1", "--rebuild")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"index {index}: 10 files" in r.stdout and "added 10" in r.stdout
  assert store.read_manifest(index).model["weights_sha256"] == meta["weights_sha256"]


def test_faiss_a_required_test_dependency_imports_and_searches():
  """faiss-cpu is in the test extra: a broken install fails here instead of skipping the
  approximate-index tests."""
  import faiss
  x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
  index = faiss.IndexFlatIP(8)
  index.add(x)
  _, ids = index.search(x[:3], 1)
  assert ids[:, 0].tolist() == [int(np.argmax(x @ q)) for q in x[:3]]
