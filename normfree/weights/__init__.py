"""Weights: key maps, DeepMind's Haiku files read safely, strict loading, metadata, pretrained
models ready to predict, and inference forms (folded WS, ONNX) (docs/architecture.md §14)."""
