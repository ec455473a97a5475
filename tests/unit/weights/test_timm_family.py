"""timm's own NF models (L family, ECA, NF-ResNet-50, NF-RegNet-B1, test_nfnet): parameter
counts, tensor-for-tensor loading of bare timm files with the variant inferred, logits equal to
timm's, preprocessing from the weights, and the clear error for an unknown architecture."""

import json

import pytest
import safetensors.torch
import torch
from PIL import Image

from normfree import create_model, load_pretrained
from normfree.errors import CheckpointError
from normfree.nn.counts import count
from normfree.nn.variants import VARIANTS
from normfree.nn.zoo import count_params

from helpers import randomised_timm, relative_error

timm = pytest.importorskip("timm")

# normfree name → (timm name, parameters with 1000 classes as timm counts them)
TIMM_MODELS = {
    "nfnet_l0": ("nfnet_l0", 35_074_488),
    "eca_nfnet_l0": ("eca_nfnet_l0", 24_143_924),
    "eca_nfnet_l1": ("eca_nfnet_l1", 41_407_728),
    "eca_nfnet_l2": ("eca_nfnet_l2", 56_722_348),
    "eca_nfnet_l3": ("eca_nfnet_l3", 72_036_968),
    "timm_nf_resnet50": ("nf_resnet50", 25_557_032),
    "timm_nf_regnet_b1": ("nf_regnet_b1", 10_223_984),
    "test_nfnet": ("test_nfnet", 383_080),
    "nfnet_f0": ("dm_nfnet_f0", 71_489_284),  # DeepMind's architecture, timm's numerics
}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_parameter_counts_equal_timms(name):
    timm_name, published = TIMM_MODELS[name]
    with torch.device("meta"):
        ours, theirs = create_model(name), timm.create_model(timm_name)
    assert count_params(ours) == sum(p.numel() for p in theirs.parameters()) == published
    assert count(VARIANTS[name])[0] == published  # `normfree list` counts without building


def test_paper_nf_resnet50_has_a_skip_gain_per_block_more_than_timms():
    assert count(VARIANTS["nf_resnet50"])[0] == 25_557_048 == 25_557_032 + 16


def save_bare(model, path):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_bare_timm_file_loads_as_the_inferred_variant_with_timms_logits(name, tmp_path):
    timm_model = randomised_timm(timm, TIMM_MODELS[name][0])
    suffix = ".pth" if name == "timm_nf_regnet_b1" else ".safetensors"  # both kinds of file
    pretrained = load_pretrained(save_bare(timm_model, tmp_path / f"model{suffix}"), device="cpu")
    assert pretrained.name == name and pretrained.source_format == "timm"
    ours = pretrained.model
    for size in (64, 65):  # even and odd: the padding rules differ only at even sizes
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            assert relative_error(ours(x), timm_model(x)) < 2e-5, size
            # in float64 rounding vanishes: the same function, not just close numbers
            exact = relative_error(ours.double()(x.double()), timm_model.double()(x.double()))
            ours.float(), timm_model.float()
        assert exact < 1e-10, size


def test_timm_weights_carry_timms_preprocessing(tmp_path):
    path = save_bare(randomised_timm(timm, "eca_nfnet_l0"), tmp_path / "model.safetensors")
    pre = load_pretrained(path, device="cpu").preprocessing
    assert (pre["crop"], pre["resize"], pre["resize_mode"]) == (288, 288, "shorter")
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # a timm config.json beside the file wins over the table of facts
    config = {"architecture": "eca_nfnet_l0", "pretrained_cfg": {
        "input_size": [3, 224, 224], "test_input_size": [3, 256, 256], "crop_pct": 0.9,
        "test_crop_pct": 0.875, "interpolation": "bilinear", "mean": [0.5] * 3,
        "std": [0.25] * 3}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    pretrained = load_pretrained(path, device="cpu")
    pre = pretrained.preprocessing
    assert (pre["crop"], pre["resize"], pre["interpolation"]) == (256, 292, "bilinear")
    assert pre["std"] == [0.25] * 3
    # --image-size keeps the crop fraction
    image = Image.new("RGB", (400, 300))
    assert tuple(pretrained.transform(image_size=224)(image).shape) == (3, 224, 224)


def test_dm_nfnet_from_timm_keeps_timms_squash_preprocessing(tmp_path):
    path = save_bare(randomised_timm(timm, "dm_nfnet_f0"), tmp_path / "model.safetensors")
    pretrained = load_pretrained(path, device="cpu")
    assert (pretrained.name, pretrained.numerics) == ("nfnet_f0", "timm")
    pre = pretrained.preprocessing
    assert (pre["crop"], pre["resize"], pre["resize_mode"]) == (256, 284, "squash")


def test_unknown_timm_architecture_names_nearest_variants_and_differing_tensors(tmp_path):
    timm_model = timm.create_model("eca_nfnet_l0", channels=(256, 512, 1536, 1024),
                                   num_features=2048)
    path = save_bare(timm_model, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_pretrained(path, device="cpu")
    message = str(error.value)
    assert "unknown architecture" in message and "eca_nfnet_l0" in message
    assert "stages.3.0.conv1.weight" in message or "final_conv.weight" in message


def test_pretrained_for_a_model_without_released_weights_is_refused():
    from normfree.errors import ConfigError
    with pytest.raises(ConfigError, match="no released weights for 'eca_nfnet_l3'"):
        create_model("eca_nfnet_l3", pretrained=True)
