"""Checkpoints of SAM-DETR: atomic writes, the checkpointer (strict loading, resuming past a
damaged file) and the conversion of the official code's checkpoints."""
