"""Files written by normfree 0.1.0 before the package layout changed still load and compute the
same numbers (tests/fixtures/v0.1.0/README.md says how they were made)."""

import json
from pathlib import Path

import pytest
import torch

from normfree.training.checkpoints import load_checkpoint
from normfree.training.config import from_dict
from normfree import create_model
from normfree.training.optim import build_optimizer, load_optimizer_state
from normfree.training.runs import evaluate_checkpoint
from normfree.weights.pretrained import load_pretrained

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v0.1.0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
INPUT = torch.randn(2, 3, 17, 17, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,key", [("tiny_converted.safetensors", "converted_logits"),
                                      ("model.safetensors", "run_logits")])
def test_old_weights_files_give_the_same_logits(name, key):
    pretrained = load_pretrained(FIXTURES / name, device="cpu")
    assert pretrained.name == "nfnet_tiny"
    with torch.no_grad():
        logits = pretrained.model(INPUT)
    assert torch.allclose(logits, torch.tensor(EXPECTED[key]), rtol=1e-5, atol=1e-6)


def test_old_checkpoint_evaluates_as_before():
    result = evaluate_checkpoint(FIXTURES / "checkpoint.pt", device="cpu")
    expected = EXPECTED["checkpoint_eval"]
    assert result["weights"] == expected["weights"]
    assert result["top1"] == expected["top1"] and result["top5"] == expected["top5"]
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_old_checkpoint_parts_load_into_the_new_training_objects():
    """Model, EMA and optimizer state of the old checkpoint fit what a resumed run builds."""
    saved = load_checkpoint(FIXTURES / "checkpoint.pt")
    cfg = from_dict(saved["config"])
    model = create_model(cfg.model, len(saved["classes"]))
    model.load_state_dict(saved["model"])
    model.load_state_dict(saved["ema"])
    optimizer = build_optimizer(cfg, model)
    load_optimizer_state(optimizer, saved["optimizer"])
    momenta = [optimizer.state[p]["momentum_buffer"] for g in optimizer.param_groups
               for p in g["params"]]
    assert len(momenta) == len(list(model.parameters()))
    assert all(m.shape == p.shape for m, p in zip(momenta, (p for g in optimizer.param_groups
                                                            for p in g["params"])))
