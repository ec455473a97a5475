"""Analysis: signal-propagation statistics, the papers' claims as experiments, and the
throughput bench (docs/architecture.md §14)."""
