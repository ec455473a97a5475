"""Datasets: Fashion-MNIST IDX files, image folders, synthetic images; their batching and
transforms (docs/architecture.md §14)."""
