"""Writers of a trained run as artefacts that run without the training code: the jax.export
artefact (stablehlo, the default) and the formats other runtimes read, ONNX (onnxruntime),
TF SavedModel (TF Serving) and TFLite (phones, the Raspberry Pi), each proven equal to the
jax.export artefact (tests/test_exports.py).

One contract for ONNX, SavedModel and TFLite (docs/guides/export.md): DIR/model.onnx,
DIR/saved_model/ or DIR/model.tflite, and DIR/meta.json; input `mel` [B, frames, mels] or,
with the frontend inside the graph, `audio` [B, window_samples] float32 mono at the model's
rate; outputs `probabilities` [B, classes] and `embeddings` [B, D].

  stablehlo       the jax.export artefact (jaxaudio.inference.exported loads it)
  contract        flag values, file and tensor names (no JAX, no TensorFlow)
  frontend_graph  the log-mel frontend as graph operations (the raw-audio input)
  graph           the function every format converts: input -> probabilities, embeddings
  to_onnx, to_saved_model, to_tflite   one converter each, with its quantisation
  card            meta.json and its model card (data, metrics, licence of the weights)
  quantize        calibration windows and the accuracy change on the test split
  runtime         load and run an export without JAX (onnxruntime, LiteRT, TensorFlow)
  build           a run (or any model) -> DIR
"""
