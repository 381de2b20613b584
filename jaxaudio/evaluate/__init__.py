"""Evaluation: classification metrics, reports (and later robustness and retrieval)."""
