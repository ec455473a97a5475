"""The precisions training and evaluation run in, by name; a module without torch, so that the
command line can offer them without importing it."""

PRECISIONS = ("fp32", "bf16", "fp16")
