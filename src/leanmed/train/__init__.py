"""Training: model and setting registries, the training loop and its measurements."""
