"""Evaluation: per-clip metrics, calibration, retrieval, robustness, cross-validation."""
