"""The export contract shared by the writers and the runtime: flag values, file and tensor
names. No JAX or TensorFlow here: the runtime imports it."""

from __future__ import annotations

FORMATS = ("stablehlo", "onnx", "saved_model", "tflite")
INPUTS = ("mel", "audio")
QUANTIZE = ("none", "float16", "int8")
OUTPUTS = ("probabilities", "embeddings")
FILES = {"onnx": "model.onnx", "saved_model": "saved_model", "tflite": "model.tflite"}
META = "meta.json"
QUANT_REPORT = "quantization.json"
FORMAT_VERSION = 1

# What the raw-audio graph leaves to the caller, stated in meta.json and the docs.
NOT_IN_AUDIO_GRAPH = (
    "resampling: the graph takes mono float32 PCM at sample_rate; resample first "
    "(jaxaudio decodes with soxr)",
    "file-level preprocessing: loudness normalisation (settings.loudness, over the whole "
    "file before it is cut), trimming and denoising, when the run used them; apply them "
    "to the recording before cutting windows",
    "cutting: windows of window_samples taken every hop_samples, the last partial one "
    "padded with zeros by the caller")
NOT_IN_MEL_GRAPH = (
    "the log-mel frontend: compute `mel` windows with jaxaudio.audio.frontend.log_mel and the "
    "FrontendSpec in `frontend` (or export with --input=audio)",)


def fixed_batch(fmt: str, quantize: str) -> int | None:
  """The input's fixed batch size, or None where any batch size is taken: an int8 TFLite
  model takes one window per call (TF's int8 calibration crashes on the batch loop, see
  jaxaudio/exports/to_tflite.py)."""
  return 1 if (fmt, quantize) == ("tflite", "int8") else None


def with_input_name(fn, input_name: str):
  """`fn` as a one-argument function whose argument is called `input_name` ("mel" or
  "audio"): TF names a signature's input after the traced function's argument."""
  if input_name == "mel":
    def serve(mel):
      return fn(mel)
  else:
    def serve(audio):
      return fn(audio)
  return serve
