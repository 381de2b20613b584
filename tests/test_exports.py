"""ONNX, TF SavedModel and TFLite exports (jaxaudio/exports/) against the jax.export artefact.

Every family (aiSFX, PANNs, musicnn, vgg; tiny widths, seeded weights) and every format:
onnxruntime, the LiteRT interpreter and TensorFlow give the jax.export program's outputs on
real audio windows to 1e-5 (float32); the raw-audio graphs give jaxaudio's own frontend
(numpy, float64 FFT) + the model. On the tiny trained run: the command's artefacts, meta.json
and its model card, the quantised exports' accuracy report, and a runtime without JAX.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

FAMILIES = {"aisfx": (4, 8, 8, 16), "panns_cnn6": (4, 8, 8, 16), "musicnn_mtt": (8, 4, 8, 16),
            "vgg_mtt": (4, 4, 4, 4, 4)}
FORMATS = ("onnx", "saved_model", "tflite")
TOL = 1e-5
# The raw-audio graph computes the frontend in float32 (a DFT matrix product), jaxaudio in
# float64: measured at most ~3e-6 on aiSFX's and ~2e-5 on musicnn's normalised log-mel and
# 0.03 dB on PANNs' (unnormalised dB, -100..25) for these windows; the outputs then differ by
# at most 4.3e-6 (docs/guides/export.md).
AUDIO_TOL = 1e-4


def _windows(spec, n, seed=0):
  """n audio windows at the model's rate: tones, a chirp and noise, as a recording holds."""
  from jaxaudio.exports.frontend_graph import window_samples
  rng = np.random.default_rng(seed)
  size = window_samples(spec)
  t = np.arange(size) / spec.sample_rate
  out = []
  for i in range(n):
    f0 = 150.0 * (i + 1)
    x = 0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-t * (i % 3))
    x += 0.3 * np.sin(2 * np.pi * (f0 + 900 * t) * t) + 0.02 * (i + 1) * rng.standard_normal(size)
    out.append(x)
  return np.stack(out).astype(np.float32)


class Family:
  """A tiny seeded classifier of one family and its jax.export reference (as
  jaxaudio.exports.stablehlo exports a run: weights as arguments, symbolic batch)."""

  def __init__(self, name, multi_label):
    import jax
    import jax.numpy as jnp
    from jaxaudio.audio import frontend
    from jaxaudio.models.head import EmbeddingClassifier
    from jaxaudio.models.init import init_variables
    from jaxaudio.models.registry import finetune_backbone, get_model
    self.info = get_model(name)
    self.spec = self.info.spec
    self.multi_label = multi_label
    self.classes = ["a", "b", "c"]
    self.model = EmbeddingClassifier(finetune_backbone(self.info, widths=FAMILIES[name]), 3)
    x = jnp.zeros((1, self.spec.frames_per_window, self.spec.n_mels), jnp.float32)
    self.variables = init_variables(self.model, jax.random.PRNGKey(1), x)
    leaves, treedef = jax.tree_util.tree_flatten(self.variables)
    self.weights = [np.asarray(w) for w in leaves]

    def forward(flat, mel):
      out = self.model.apply(jax.tree_util.tree_unflatten(treedef, flat), mel, train=False)
      return out["embedding"], out["logits"]
    (b,) = jax.export.symbolic_shape("batch")
    self.exported = jax.export.export(jax.jit(forward))(
        [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in self.weights],
        jax.ShapeDtypeStruct((b, *x.shape[1:]), np.float32))
    self.audio = _windows(self.spec, 3)
    self.mel = np.stack([frontend.log_mel(a, self.spec) for a in self.audio])

  def reference(self, mel):
    """jax.export's outputs, probabilities as jaxaudio computes them from the logits."""
    from jaxaudio.models.outputs import probabilities
    emb, logits = self.exported.call(self.weights, mel)
    return {"probabilities": probabilities(np.asarray(logits), self.multi_label),
            "embeddings": np.asarray(emb)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
  # musicnn exports as a multi-label run (sigmoid in the graph), the others single-label.
  return Family(request.param, multi_label=request.param == "musicnn_mtt")


def _max_diff(got, ref):
  return {k: float(np.abs(np.asarray(got[k], np.float64) - ref[k]).max()) for k in ref}


# Mel graphs in every format; raw-audio graphs in ONNX here (the frontend graph is the same
# JAX program for every format: the trained run's test takes it through TFLite and TF too).
@pytest.mark.parametrize("input_kind,formats", [("mel", FORMATS), ("audio", ("onnx",))])
def test_every_format_of_every_family_equals_jax_export(family, input_kind, formats, tmp_path):
  from jaxaudio.exports import build, runtime
  from jaxaudio.exports.frontend_graph import window_samples
  ref = family.reference(family.mel)
  x = family.mel if input_kind == "mel" else family.audio
  tol = TOL if input_kind == "mel" else AUDIO_TOL
  for fmt in formats:
    out = str(tmp_path / fmt)
    meta = build.export_model(family.model, family.variables, family.spec, family.classes,
                              family.multi_label, out, fmt, input_kind,
                              settings={"window_hop": 0.5})
    got = runtime.load(out)(x)
    assert got["probabilities"].shape == (3, 3) and got["probabilities"].dtype == np.float32
    assert got["embeddings"].shape == ref["embeddings"].shape
    diff = _max_diff(got, ref)
    assert max(diff.values()) <= tol, (family.info.name, fmt, input_kind, diff)
    assert meta["input"] == {"name": input_kind, "dtype": "float32", "shape": [-1, *x.shape[1:]]}
    assert meta["window_samples"] == window_samples(family.spec) and meta["batch"] == "any"
    assert meta["multi_label"] == family.multi_label


def test_the_audio_graph_frontend_matches_jaxaudios_frontend(family):
  """The in-graph log-mel against jaxaudio.audio.frontend.log_mel (float64 FFT)."""
  import jax
  from jaxaudio.exports.frontend_graph import log_mel_fn
  got = np.asarray(jax.jit(log_mel_fn(family.spec))(family.audio))
  scale = {"power_to_db": 0.05}.get(family.spec.compression, 5e-5)
  assert got.shape == family.mel.shape
  assert np.abs(got - family.mel).max() <= scale


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
  """The tiny trained run (aiSFX) exported in every format, float and quantised:
  {name: DIR}, and the run's jax.export artefact."""
  from jaxaudio.exports import build, stablehlo
  from jaxaudio.evaluation import thresholds
  workdir, _ = trained
  root = tmp_path_factory.mktemp("exports")
  cuts = thresholds.as_mapping(thresholds.for_run(workdir, "best"))
  dirs = {}
  for fmt, input_kind, quantize in (("onnx", "mel", "none"), ("saved_model", "mel", "none"),
                                    ("tflite", "mel", "none"), ("onnx", "audio", "none"),
                                    ("saved_model", "audio", "none"),
                                    ("tflite", "audio", "none"), ("onnx", "mel", "int8"),
                                    ("tflite", "mel", "int8"), ("tflite", "mel", "float16")):
    name = f"{fmt}-{input_kind}-{quantize}"
    dirs[name] = str(root / name)
    build.export_run(workdir, dirs[name], fmt, input_kind, quantize, "best", cuts)
  return workdir, dirs, stablehlo.for_run(workdir), cuts


def _test_windows(workdir):
  from jaxaudio.data.prepare import prepare
  from jaxaudio.exports import quantize
  from jaxaudio.runs.rundir import open_run
  run = open_run(workdir)
  return quantize.split_windows(prepare(run.cfg.data, run.info.spec, progress=False)[0], "test")


def test_the_runs_exports_equal_its_jax_export_artefact(exports):
  from jaxaudio.exports import runtime
  from jaxaudio.inference import exported
  from jaxaudio.models.outputs import probabilities
  workdir, dirs, stablehlo_dir, _ = exports
  mel, _ = _test_windows(workdir)
  model = exported.load(stablehlo_dir)
  ref = model(mel)
  ref = {"probabilities": probabilities(ref["logits"], False), "embeddings": ref["embedding"]}
  for name in ("onnx-mel-none", "saved_model-mel-none", "tflite-mel-none"):
    diff = _max_diff(runtime.load(dirs[name])(mel), ref)
    assert max(diff.values()) <= TOL, (name, diff)


def test_audio_exports_of_the_run_give_its_frontend_and_model(exports):
  """Raw audio windows cut at the run's hop from one of the run's clips: the audio graph
  against jaxaudio's frontend + the run's jax.export model."""
  from jaxaudio.audio import frontend
  from jaxaudio.audio.io import read_audio
  from jaxaudio.audio.spec import FrontendSpec
  from jaxaudio.exports import runtime
  from jaxaudio.inference import exported
  from jaxaudio.models.outputs import probabilities
  workdir, dirs, stablehlo_dir, _ = exports
  art = runtime.load(dirs["onnx-audio-none"])
  meta = art.meta
  spec = FrontendSpec.from_dict(meta["frontend"])
  cfg = json.load(open(os.path.join(workdir, "config.json")))
  clip = os.path.join(cfg["data"]["source"].split(":", 1)[1], "mid", "mid_0.wav")
  wave, rate = read_audio(clip)
  assert rate == spec.sample_rate   # the fixture's clips are at aiSFX's rate: no resampling
  wave = np.concatenate([wave, wave, wave])   # long enough for several windows
  n, hop = meta["window_samples"], meta["hop_samples"]
  audio = np.stack([wave[s:s + n] for s in range(0, len(wave) - n + 1, hop)])
  assert len(audio) >= 2
  model = exported.load(stablehlo_dir)
  ref = model(np.stack([frontend.log_mel(a, spec) for a in audio]))
  ref = {"probabilities": probabilities(ref["logits"], False), "embeddings": ref["embedding"]}
  for name in ("onnx-audio-none", "saved_model-audio-none", "tflite-audio-none"):
    diff = _max_diff(runtime.load(dirs[name])(audio), ref)
    assert max(diff.values()) <= AUDIO_TOL, (name, diff)


def test_meta_json_states_the_contract_and_the_model_card(exports):
  from jaxaudio.exports import contract
  workdir, dirs, _, cuts = exports
  labels = json.load(open(os.path.join(workdir, "labels.json")))
  for name, path in dirs.items():
    fmt, input_kind, quantize = name.split("-")
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert os.path.exists(os.path.join(path, contract.FILES[fmt])), name
    assert meta["format"] == fmt and meta["quantize"] == quantize
    assert meta["classes"] == labels["classes"] and meta["thresholds"] == cuts
    assert meta["sample_rate"] == 44100 and meta["window_samples"] == 101376
    assert meta["hop_samples"] == 50 * 1024    # window_hop 0.5 of 100 frames
    assert meta["frontend"]["n_mels"] == 96 and meta["settings"]["loudness"] == "peak"
    assert meta["input"]["name"] == input_kind
    assert list(meta["outputs"]) == ["probabilities", "embeddings"]
    assert meta["batch"] == (1 if (fmt, quantize) == ("tflite", "int8") else "any")
    said = " ".join(meta["not_in_graph"])
    if input_kind == "audio":
      assert "resampling" in said and "loudness normalisation" in said
    else:
      assert "log-mel frontend" in said
    card = meta["model_card"]
    assert card["data"]["splits"]["test"]["clips"] == 9
    assert card["metrics"]["source"] == "report/evaluation.json"
    assert 0.0 <= card["metrics"]["accuracy"] <= 1.0
    assert card["pretrained_weights"]["init"] == "scratch"
    assert "no pretrained weights" in card["pretrained_weights"]["license"]


def test_quantised_exports_report_their_accuracy_change_and_agree_with_float(exports):
  from jaxaudio.exports import runtime
  workdir, dirs, _, _ = exports
  mel, _ = _test_windows(workdir)
  ref = runtime.load(dirs["onnx-mel-none"])(mel)["probabilities"]
  for name in ("onnx-mel-int8", "tflite-mel-int8", "tflite-mel-float16"):
    rep = json.load(open(os.path.join(dirs[name], "quantization.json")))
    meta = json.load(open(os.path.join(dirs[name], "meta.json")))
    assert meta["quantization"] == rep
    assert rep["test_windows"] == len(mel) == 9 and rep["calibration"]["split"] == "train"
    assert rep["change"] == pytest.approx(rep["quantized"] - rep["float"])
    got = runtime.load(dirs[name])(mel)["probabilities"]
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    assert agree == pytest.approx(rep["agreement"]) and agree >= 8 / 9, name
    assert np.abs(got - ref).max() < 0.05, name
  sizes = {n: os.path.getsize(os.path.join(dirs[n], "model.tflite"))
           for n in ("tflite-mel-none", "tflite-mel-int8")}
  assert sizes["tflite-mel-int8"] < sizes["tflite-mel-none"]


def test_exports_run_without_jax(exports):
  """onnxruntime and LiteRT load and run the artefacts in a process where JAX cannot be
  imported."""
  _, dirs, _, _ = exports
  code = ("import sys; sys.modules['jax'] = None; sys.modules['flax'] = None\n"
          "import numpy as np\n"
          "from jaxaudio.exports import runtime\n"
          "for d in sys.argv[1:]:\n"
          "  m = runtime.load(d)\n"
          "  x = np.zeros([2] + m.meta['input']['shape'][1:], np.float32)\n"
          "  out = m(x)\n"
          "  print(d, out['probabilities'].shape, out['embeddings'].shape)\n")
  r = subprocess.run([sys.executable, "-c", code, dirs["onnx-mel-none"],
                      dirs["tflite-audio-none"], dirs["tflite-mel-int8"]],
                     capture_output=True, text=True, timeout=120, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.count("(2, 3) (2, 16)") == 3


def test_the_command_writes_a_quantised_export_and_prints_the_change(exports, cli, tmp_path):
  workdir, _, _, _ = exports
  out = str(tmp_path / "q")
  r = cli("jaxaudio.exported", f"--workdir={workdir}", f"--out={out}", "--format=onnx",
          "--quantize=float16")
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  assert lines[-1] == f"exported: {out}"
  assert lines[-2].startswith("quantization float16: top-1 accuracy on 9 test windows ")
  assert "decisions agree on" in lines[-2]
  assert json.loads(lines[-3])["format"] == "onnx"
  assert os.path.isfile(os.path.join(out, "model.onnx"))
  r = cli("jaxaudio.exported", f"--workdir={workdir}", f"--out={out}", "--input=audio")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      "error: --format=stablehlo (the default jax.export artefact) takes float32 mel windows; "
      "--input=audio and --quantize need --format=onnx, saved_model or tflite.")


def test_impossible_combinations_are_one_sentence():
  from jaxaudio.exports import build
  from jaxaudio.runtime.errors import ConfigError
  with pytest.raises(ConfigError, match="a SavedModel stays float32"):
    build.check_flags("saved_model", "mel", "int8")
  with pytest.raises(ConfigError, match="--quantize needs --input=mel"):
    build.check_flags("tflite", "audio", "int8")
  with pytest.raises(ConfigError, match="--format=coreml is not one of"):
    build.check_flags("coreml", "mel", "none")


def test_runtime_refuses_a_folder_that_is_not_an_export(tmp_path):
  from jaxaudio.exports import runtime
  with pytest.raises(ValueError, match="is not an ONNX, TFLite or SavedModel export"):
    runtime.load(str(tmp_path))
