"""normfree.data.randaugment against DeepMind's TF RandAugment (fixtures written by
scripts/make_reference_fixtures.py), and its draws and argument checks."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from normfree.data import randaugment
from normfree.data.randaugment import OPS, SIGNED_OPS, RandAugment, apply_op, op_argument
from normfree.errors import ConfigError, InputError

FIXTURE = Path(__file__).parents[2] / "fixtures" / "reference" / "randaugment.npz"
MAGNITUDES = (0, 5, 10, 15)


@pytest.fixture(scope="module")
def reference():
    """(image names, uint8 (N, 3, H, W) inputs, {(op, magnitude, sign, centre): (N, 3, H, W)})
    The fixture holds sign +1 only for the ops that have no sign."""
    with np.load(FIXTURE) as f:
        images = torch.from_numpy(f["images"]).permute(0, 3, 1, 2)
        outputs = {}
        for key, output in zip(f["keys"], f["outputs"]):
            name, magnitude, sign, center = str(key).split("|")
            center = None if center == "None" else tuple(map(int, center.strip("()").split(",")))
            outputs[name, int(magnitude), int(sign), center] = torch.from_numpy(output)
        return list(f["names"]), images, outputs


@pytest.mark.parametrize("sign", (1, -1))
@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", OPS)
def test_op_matches_reference(reference, name, magnitude, sign):
    """≥ 99 % of pixels within ±1 grey level of the reference's op, on every photo and
    synthetic image (measured: every pixel equal)."""
    names, images, outputs = reference
    fixture_sign = sign if name in SIGNED_OPS else 1  # the sign of the others changes nothing
    centers = [c for (n, m, s, c) in outputs if (n, m, s) == (name, magnitude, fixture_sign)]
    assert centers, "fixture missing"
    for center in centers:
        expected = outputs[name, magnitude, fixture_sign, center].permute(0, 3, 1, 2)
        for image_name, image, target in zip(names, images, expected):
            ours = apply_op(image, name, magnitude, sign, cutout_center=center)
            assert ours.dtype == torch.uint8 and ours.shape == image.shape
            close = ((ours.int() - target.int()).abs() <= 1).float().mean().item()
            assert close >= 0.99, f"{name} m={magnitude} sign={sign} {image_name}: {close:.4f}"


def test_arguments_follow_the_reference_mapping():
    """level = m / 10: rotate 30°, shear 0.3, translate 100 px, cutout 40 px, posterize 4 bits,
    solarize 256, solarize-add 110, enhance 1.8 · level + 0.1; sign negates only the first
    three kinds."""
    assert op_argument("Rotate", 5, -1) == -15.0
    assert op_argument("ShearX", 5, 1) == pytest.approx(0.15)
    assert op_argument("TranslateY", 5, -1) == -50.0
    assert op_argument("Cutout", 5) == 20
    assert op_argument("Posterize", 5) == 2
    assert op_argument("Solarize", 5) == 128
    assert op_argument("SolarizeAdd", 15) == 165
    assert op_argument("Color", 10, -1) == pytest.approx(1.9)
    assert op_argument("Equalize", 10) is None


def test_solarize_threshold_wraps_like_the_reference():
    """The threshold becomes a uint8 constant in TensorFlow: m = 10 (256) inverts every pixel,
    m = 15 (384) acts as m = 5 (128)."""
    image = torch.arange(256, dtype=torch.uint8).repeat(3, 4, 1)[..., :64]
    assert torch.equal(apply_op(image, "Solarize", 10), 255 - image)
    assert torch.equal(apply_op(image, "Solarize", 15), apply_op(image, "Solarize", 5))


@pytest.mark.parametrize("magnitude", (-1, 22.5, 30, "5", True, float("nan")))
def test_magnitude_outside_range_is_a_config_error(magnitude):
    with pytest.raises(ConfigError, match=r"magnitude must be a number in \[0, 22\.5\)") as e:
        RandAugment(2, magnitude)
    assert repr(magnitude) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        apply_op(torch.zeros(3, 4, 4, dtype=torch.uint8), "Invert", magnitude)


def test_largest_magnitude_keeps_posterize_defined():
    """At 22.4 Posterize keeps int(8.96) = 8 bits: the identity."""
    image = torch.randint(256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator())
    assert torch.equal(apply_op(image, "Posterize", 22.4), image)


def test_bad_arguments_are_named():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="op must be one of"):
        apply_op(image, "Shear", 5)
    with pytest.raises(ConfigError, match="sign must be 1 or -1"):
        apply_op(image, "Rotate", 5, sign=0)
    with pytest.raises(ConfigError, match="layers must be an integer"):
        RandAugment(-1, 5)
    with pytest.raises(InputError, match=r"uint8 \(3, H, W\).*float32"):
        RandAugment(2, 5)(image.float())


def test_layers_choose_ops_uniformly_and_always_apply(monkeypatch):
    """Each layer applies exactly one op, chosen uniformly from the 16, with a sign + half the
    time and a Cutout centre inside the image."""
    calls = []

    def record(image, name, magnitude, sign, center):
        calls.append((name, magnitude, sign, center))
        return image

    monkeypatch.setattr(randaugment, "apply_op", record)
    augment, generator = RandAugment(4, 15), torch.Generator().manual_seed(0)
    image = torch.zeros(3, 6, 9, dtype=torch.uint8)
    for _ in range(2000):
        augment(image, generator)
    assert len(calls) == 8000 and {c[1] for c in calls} == {15}
    counts = Counter(c[0] for c in calls)
    assert set(counts) == set(OPS)
    assert max(abs(n / 8000 - 1 / 16) for n in counts.values()) < 0.015  # 1/16 = 0.0625
    assert abs(sum(c[2] == 1 for c in calls) / 8000 - 0.5) < 0.02
    rows, columns = zip(*(c[3] for c in calls))
    assert set(rows) == set(range(6)) and set(columns) == set(range(9))


def test_same_generator_state_same_output():
    image = torch.randint(256, (3, 20, 16), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    augment = RandAugment(4, 10)
    first = augment(image, torch.Generator().manual_seed(7))
    again = augment(image, torch.Generator().manual_seed(7))
    other = augment(image, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(RandAugment(0, 10)(image, torch.Generator()), image)
