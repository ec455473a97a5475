"""The `imagenet-f*` presets: every setting they make is documented against the reference
(docs/architecture.md §11.2), and they resolve to each variant's own sizes and regularisation."""

from pathlib import Path

import pytest
import torch

from normfree.nn.variants import get_config
from normfree.training.config import PRESETS, _imagenet_recipe, preset
from normfree.training.resolve import resolve_config

ARCHITECTURE = Path(__file__).parents[3] / "docs" / "architecture.md"
IMAGENET = [name for name in PRESETS if name.startswith("imagenet-")]


def reference_table():
    text = ARCHITECTURE.read_text()
    start = text.index("### 11.2 ")
    return text[start:text.index("\n## ", start)]


def test_there_is_a_preset_per_released_variant():
    assert IMAGENET == [f"imagenet-f{n}" for n in range(7)]


@pytest.mark.parametrize("n", range(7))
def test_every_preset_setting_is_in_the_reference_table(n):
    table = reference_table()
    undocumented = [key for key in _imagenet_recipe(n)
                    if f"--{key.replace('_', '-')}" not in table]
    assert not undocumented


@pytest.mark.parametrize("n, magnitude, dropout", [
    (0, 5, 0.2), (1, 10, 0.3), (2, 10, 0.4), (3, 15, 0.4), (4, 15, 0.5), (5, 15, 0.5),
    (6, 15, 0.5)])
def test_presets_take_each_variants_sizes_magnitude_and_dropout(n, magnitude, dropout):
    cfg = resolve_config(preset(f"imagenet-f{n}", data_dir="x"), torch.device("cpu"))
    variant = get_config(f"nfnet_f{n}")
    assert (cfg.image_size, cfg.test_size) == (variant.train_size, variant.test_size)
    assert cfg.randaugment == (4, magnitude) and cfg.dropout == dropout == variant.dropout
    assert cfg.pipeline == "reference" and not cfg.tta_flip and cfg.eval_precision == "fp32"
    assert (cfg.sam_rho is not None) == (n == 6)
