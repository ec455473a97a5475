"""Evaluate a training checkpoint on its dataset's test (or validation) split."""

from dataclasses import replace

import torch

from .checkpoint import check_layout, load_checkpoint
from .config import from_dict
from .data import Normalize, make_data
from .runs import model_for
from .train import evaluate


def evaluate_checkpoint(path, data_dir=None, split="test", device=None):
    """Top-1/top-5 of the weights a run selected (EMA or raw), as a dict."""
    state = load_checkpoint(path)
    cfg = from_dict(state["config"])
    if data_dir is not None:
        cfg = replace(cfg, data_dir=data_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = make_data(cfg)
    model = model_for(cfg, data)
    weights = state["selected"][0] if state.get("selected") else "raw"
    check_layout(model, state.get("layout"), path)
    model.load_state_dict(state["ema"] if weights == "ema" else state["model"])
    model.to(device)
    result = evaluate(model, getattr(data, split), Normalize(data.mean, data.std).to(device), cfg,
                      device)
    return {**result, "weights": weights, "split": split, "checkpoint": str(path),
            "images": sum(len(labels) for _, labels in getattr(data, split))}
