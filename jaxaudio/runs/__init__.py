"""A training run: its config (defaults and validation) and its directory on disk."""
