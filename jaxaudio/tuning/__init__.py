"""Hyperparameter sweeps (python -m jaxaudio.sweep): the search space, the shared Optuna
study and its workers, and the sweep's report."""
