"""Data: sources of labelled audio, one-time log-mel preparation, and the grain pipeline."""
