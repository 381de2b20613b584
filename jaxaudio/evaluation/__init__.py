"""Honest numbers: metrics, held-out evaluation under varied conditions, calibration, thresholds, reports."""
