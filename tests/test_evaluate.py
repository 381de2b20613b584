"""`jaxaudio.evaluate` on a tiny trained run: consistent with the trainer, complete report."""

import json
import os

import pytest


def test_evaluate_matches_the_trainer_and_writes_everything(trained):
  from jaxaudio.evaluation.heldout import evaluate_run
  workdir, test_report = trained
  # The trainer already ran the same code at the end of the run (evaluate.at_end).
  at_end = json.load(open(os.path.join(workdir, "report", "evaluation.json")))
  assert at_end["step"] == test_report["best_step"] and "retrieval" not in at_end
  assert at_end["classification"]["accuracy"] == pytest.approx(test_report["accuracy"], abs=1e-9)
  assert at_end["classification"]["accuracy_ci95"][0] <= test_report["accuracy"]
  result = evaluate_run(workdir, with_retrieval=True, with_robustness=True, bootstrap=200)
  c = result["classification"]
  assert result["step"] == test_report["best_step"]
  for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "num_examples"):
    assert c[key] == pytest.approx(test_report[key], abs=1e-9), key
  lo, hi = c["accuracy_ci95"]
  assert lo <= c["accuracy"] <= hi and 0.0 <= c["ece"] <= 1.0
  assert set(c["per_class_ap"]) == {"high", "low", "mid"}
  # Retrieval: the run's starting weights (seeded scratch init here) against the tuned ones.
  assert set(result["retrieval"]) == {"scratch init", "fine-tuned"}
  assert result["retrieval"]["fine-tuned"]["num_queries"] == c["num_examples"] == 9
  # Robustness: re-featurising the clean audio reproduces the prepared test split exactly,
  # and peak normalisation makes a pure gain change invisible.
  rob = result["robustness"]
  assert rob["clean"]["accuracy"] == pytest.approx(c["accuracy"], abs=1e-9)
  assert rob["gain_-12dB"]["accuracy"] == rob["clean"]["accuracy"]
  assert {"white_noise_0dB", "pink_noise_30dB", "lowpass_4kHz", "crop_half"} <= set(rob)
  assert rob["white_noise_0dB"]["drop_accuracy"] == pytest.approx(
      rob["clean"]["accuracy"] - rob["white_noise_0dB"]["accuracy"])
  out = os.path.join(workdir, "report")
  for name in ("evaluation.json", "evaluation.md", "pr_curves.png", "reliability.png",
               "robustness.png"):
    assert os.path.getsize(os.path.join(out, name)) > 200, name
  assert json.load(open(os.path.join(out, "evaluation.json")))["split"] == "test"
  md = open(os.path.join(out, "evaluation.md")).read()
  assert "| fine-tuned |" in md and "| white_noise_10dB |" in md


def test_the_console_headline_names_the_metric_its_interval_and_ece(trained):
  from jaxaudio.workflows.finetune import headline
  workdir, _ = trained
  c = json.load(open(os.path.join(workdir, "report", "evaluation.json")))["classification"]
  lo, hi = c["accuracy_ci95"]
  assert headline(c) == (f"test accuracy {c['accuracy']:.4f} (95% interval {lo:.4f}-{hi:.4f}), "
                         f"ECE {c['ece']:.4f}")
  # A multi-label run reports mAP and has no ECE; without bootstrap there is no interval.
  assert headline({"mAP": 0.81234, "mAP_ci95": [0.7, 0.9]}) == (
      "test mAP 0.8123 (95% interval 0.7000-0.9000)")
  assert headline({"accuracy": 0.5, "ece": 0.25}) == "test accuracy 0.5000, ECE 0.2500"


def test_evaluate_cli_refuses_a_directory_that_is_not_a_run(cli, tmp_path):
  r = cli("jaxaudio.evaluate", f"--workdir={tmp_path}")
  assert r.returncode == 2
  assert "has no config.json; pass the --workdir of a `python -m jaxaudio.main` run" in r.stderr


def test_exported_model_loads_without_flax_and_gives_the_same_outputs(trained, tmp_path):
  import subprocess
  import sys

  import numpy as np

  from jaxaudio.inference import exported
  from jaxaudio.exports import stablehlo
  from jaxaudio.runs.rundir import open_run
  workdir, _ = trained
  out = str(tmp_path / "export")
  meta = stablehlo.export_run(workdir, out)
  run = open_run(workdir)
  assert meta["classes"] == run.classes and meta["weights_sha256"]
  assert meta["frontend"]["n_mels"] == run.info.spec.n_mels
  rng = np.random.default_rng(0)
  for n in (3, 5):   # the batch size is symbolic
    mel = rng.uniform(0, 1, (n, 100, 96)).astype(np.float32)
    np.save(tmp_path / f"mel{n}.npy", mel)
    ref = run.model.apply(run.variables, mel, train=False)
    np.save(tmp_path / f"emb{n}.npy", np.asarray(ref["embedding"]))
    np.save(tmp_path / f"logits{n}.npy", np.asarray(ref["logits"]))
  script = f"""
import sys, numpy as np
import jaxaudio.inference.exported as ex
m = ex.load({out!r})
for n in (3, 5):
  o = m(np.load({str(tmp_path)!r} + f"/mel{{n}}.npy"))
  for k in ("emb", "logits"):
    ref = np.load({str(tmp_path)!r} + f"/{{k}}{{n}}.npy")
    got = o["embedding" if k == "emb" else "logits"]
    assert got.shape == ref.shape, (got.shape, ref.shape)
    print(k, n, float(np.max(np.abs(got - ref))))
    assert np.max(np.abs(got - ref)) <= 1e-5
assert "flax" not in sys.modules and "jaxaudio.train" not in sys.modules, sorted(sys.modules)
print("ok")
"""
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
  # A damaged artifact is refused with one sentence.
  np.savez(f"{out}/weights.npz", w00000=np.zeros(3))
  with pytest.raises(ValueError, match="does not match the sha256 in meta.json"):
    exported.load(out)
  with pytest.raises(ValueError, match="is not an exported jaxaudio model"):
    exported.load(str(tmp_path))


def test_shift_warning_fires_only_beyond_both_intervals():
  from jaxaudio.evaluation.heldout import shift_warning
  val = {"macro_f1": 0.977, "macro_f1_ci95": [0.95, 0.99]}
  far = {"macro_f1": 0.396, "macro_f1_ci95": [0.33, 0.46]}
  near = {"macro_f1": 0.93, "macro_f1_ci95": [0.88, 0.96]}
  found = shift_warning(val, far, grouped=False)
  assert found["metric"] == "macro_f1" and found["test_ci95"] == [0.33, 0.46]
  assert "test macro_f1 0.396" in found["message"] and "set data.group" in found["message"]
  assert "not by what separates" in shift_warning(val, far, grouped=True)["message"]
  assert shift_warning(val, near, grouped=False) is None
  assert shift_warning({"mAP": 0.9, "mAP_ci95": [0.85, 0.95]},
                       {"mAP": 0.2, "mAP_ci95": [0.1, 0.3]}, grouped=False)["metric"] == "mAP"
  assert shift_warning({"macro_f1": 0.9}, far, grouped=False) is None   # no intervals


def test_a_test_split_far_below_validation_is_reported_with_the_fix(tmp_path):
  """Test clips whose labels are another class's (a test set unlike anything validation
  held): the run's evaluation says so in evaluation.json and .md and names data.group."""
  from datafixtures import write_class_folder
  from jaxaudio.runs import configs
  from jaxaudio.workflows import finetune
  root = write_class_folder(str(tmp_path / "clips"), splits={"train": 8, "validation": 3,
                                                              "test": 3})
  test = os.path.join(root, "test")   # low -> mid -> high -> low: every test label wrong
  os.rename(os.path.join(test, "low"), os.path.join(test, "tmp"))
  os.rename(os.path.join(test, "high"), os.path.join(test, "low"))
  os.rename(os.path.join(test, "mid"), os.path.join(test, "high"))
  os.rename(os.path.join(test, "tmp"), os.path.join(test, "mid"))
  cfg = configs.base_config()
  cfg.data.source, cfg.data.prepared_dir = f"folder:{root}", str(tmp_path / "prepared")
  cfg.model.init, cfg.model.widths = "scratch", (4, 8, 8, 16)
  cfg.train.update(num_steps=80, eval_every=20, log_every=20, batch_size=8, warmup_steps=3,
                   probe_steps=10, param_groups=(("^backbone/", "backbone"), ("^head/", "head")),
                   group_lr_mult={"head": 1.0, "backbone": 1.0}, learning_rate=3e-3)
  cfg.evaluate.bootstrap = 200
  workdir = str(tmp_path / "run")
  finetune.run(cfg, workdir)
  result = json.load(open(os.path.join(workdir, "report", "evaluation.json")))
  shift = result["validation_shift"]
  assert shift is not None, json.load(open(os.path.join(workdir, "report", "test_metrics.json")))
  assert shift["test_ci95"][1] < shift["validation_ci95"][0]
  assert "set data.group" in shift["message"]
  md = open(os.path.join(workdir, "report", "evaluation.md")).read()
  assert "## Warning: validation does not mirror the test split" in md
