"""The networks: layers, the Scaled-WS conv, the NF block and network classes, the variants
table with `build_model`, and the batch-norm twins (docs/architecture.md §14)."""
