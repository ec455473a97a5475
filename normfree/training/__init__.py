"""Training: the config and presets, AGC and the optimizer, checkpoints, data-parallel
processes, the loop, run directories and logs (docs/architecture.md §14)."""
