"""Running a trained model on new audio: predictor, embedder, the standalone export, result files."""
