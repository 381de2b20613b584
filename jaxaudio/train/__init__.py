"""Training: parameter groups and optimizer, state, pure steps, parallel wrappers."""
