"""Training: the trainer, its training step, numeric precision, optimiser and launching."""
