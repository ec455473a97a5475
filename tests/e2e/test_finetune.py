"""Fine-tuning: weights trained by us on one folder dataset help on another one with new classes.

Dataset A and B are ImageFolder trees of drawn shapes (different shapes in each, random colours,
positions and noise): features learned on A (edges, bars, curves) transfer to B.
"""

import pytest
import torch
from PIL import Image

from normfree.training.config import preset
from normfree.training.loop import train

SHAPES_A = ("hbar", "vbar", "ring", "square")
SHAPES_B = ("cross", "diagonal", "disc", "antidiagonal")


def shape_mask(kind, size, cx, cy):
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dx, dy = (x - cx).float(), (y - cy).float()
    r, box = (dx ** 2 + dy ** 2).sqrt(), torch.maximum(dx.abs(), dy.abs())
    hbar, vbar = (dy.abs() < 2) & (dx.abs() < 7), (dx.abs() < 2) & (dy.abs() < 7)
    return {"hbar": hbar, "vbar": vbar, "cross": hbar | vbar,
            "ring": (r > 4) & (r < 7), "disc": r < 6, "square": (box >= 5) & (box < 7),
            "diagonal": ((dx - dy).abs() < 2) & (dx.abs() < 7),
            "antidiagonal": ((dx + dy).abs() < 2) & (dx.abs() < 7)}[kind]


def write_shapes(root, kinds, per_class, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    for kind in kinds:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            cx, cy = torch.randint(9, size - 9, (2,), generator=g).tolist()
            background = torch.rand(3, 1, 1, generator=g) * 100
            colour = 155 + torch.rand(3, 1, 1, generator=g) * 100
            image = torch.where(shape_mask(kind, size, cx, cy), colour, background)
            image = (image + torch.randn(3, size, size, generator=g) * 20).clamp(0, 255)
            Image.fromarray(image.byte().permute(1, 2, 0).numpy()).save(root / kind / f"{i}.png")


def folder_run(data_dir, out_dir, **overrides):
    values = dict(model="nfnet_tiny", data_dir=str(data_dir), out_dir=str(out_dir),
                  image_size=32, batch_size=16, eval_batch_size=64, precision="fp32",
                  progress=False, workers=0)
    return train(preset("finetune", **{**values, **overrides}))


@pytest.fixture(scope="module")
def pretrained_on_a(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_a")
    write_shapes(root / "train", SHAPES_A, 96, seed=0)
    write_shapes(root / "val", SHAPES_A, 16, seed=1)
    result = folder_run(root, root / "run", epochs=8, lr=0.05, dropout=0.0,
                        stochastic_depth=0.0)
    assert result["test_top1"] > 60.0  # A was learned (chance: 25 %)
    return root / "run" / "model.safetensors"


def test_finetuning_beats_training_from_scratch(pretrained_on_a, tmp_path):
    write_shapes(tmp_path / "b" / "train", SHAPES_B, 12, seed=2)
    write_shapes(tmp_path / "b" / "val", SHAPES_B, 32, seed=3)
    budget = dict(epochs=6, lr=0.02)
    tuned = folder_run(tmp_path / "b", tmp_path / "tuned", init_from=str(pretrained_on_a),
                       model=None, **budget)
    scratch = folder_run(tmp_path / "b", tmp_path / "scratch", **budget)
    print(f"shapes B, 12 images/class, 6 epochs: fine-tuned {tuned['test_top1']:.1f} %, "
          f"from scratch {scratch['test_top1']:.1f} %")
    assert tuned["test_top1"] >= scratch["test_top1"] + 10.0


def test_finetuned_weights_keep_class_names_and_freeze_holds(pretrained_on_a, tmp_path):
    from safetensors.torch import load_file

    from normfree.weights.pretrained import load_pretrained
    write_shapes(tmp_path / "b" / "train", SHAPES_B, 4, seed=4)
    write_shapes(tmp_path / "b" / "val", SHAPES_B, 2, seed=5)
    folder_run(tmp_path / "b", tmp_path / "run", init_from=str(pretrained_on_a), model=None,
               epochs=1, warmup_epochs=0, freeze="stem,stages.0", ema_decay=0.0)
    tuned = load_pretrained(tmp_path / "run" / "model.safetensors", device="cpu")
    assert tuned.classes == tuple(sorted(SHAPES_B)) and tuned.name == "nfnet_tiny"
    before, after = load_file(pretrained_on_a), load_file(tmp_path / "run" / "model.safetensors")
    frozen = [k for k in before if k.startswith(("stem.", "stages.0."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["stages.1.0.conv1.weight"], after["stages.1.0.conv1.weight"])


def test_bad_finetune_flags_are_named(pretrained_on_a, tmp_path):
    from normfree.errors import CheckpointError
    write_shapes(tmp_path / "b" / "train", SHAPES_B, 2, seed=6)
    write_shapes(tmp_path / "b" / "val", SHAPES_B, 1, seed=7)
    with pytest.raises(ValueError, match="--freeze: the model has no module 'stages.9'"):
        folder_run(tmp_path / "b", tmp_path / "r1", init_from=str(pretrained_on_a), model=None,
                   freeze="stages.9")
    with pytest.raises(CheckpointError, match="does not exist"):
        folder_run(tmp_path / "b", tmp_path / "r2", init_from=str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="stage depths"):  # weights of another variant
        folder_run(tmp_path / "b", tmp_path / "r3", init_from=str(pretrained_on_a),
                   model="nfnet_s0")
