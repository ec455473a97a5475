"""The reference's RandAugment on uint8 (3, H, W) tensors (docs/architecture.md §11.1).

RandAugment (Cubuk et al., arXiv:1909.13719) as DeepMind's NFNet code runs it (`nfnets/
autoaugment.py`, TensorFlow and tensorflow_addons): each of `num_layers` layers picks one of the
16 `OPS` uniformly and always applies it at the shared magnitude; Rotate, ShearX/Y and
TranslateX/Y negate their argument with probability 1/2; Cutout's centre is uniform over the
image. Magnitude m maps to each op's argument through m / 10 (`op_argument`). Pixels that
geometric ops bring in from outside the image, and Cutout's square, are grey 128.

Every op equals the reference's on ≥ 99 % of pixels within ±1 grey level, at magnitudes 0, 5,
10 and 15 with both signs (tests/unit/data/test_randaugment.py, against fixtures written by
the reference code: scripts/make_reference_fixtures.py).

Differences from the reference implementation: the random numbers (a `torch.Generator`).
Rotate/Shear/Translate follow TensorFlow 2.15's transform kernel, which bounds-checks the
rounded coordinate; TensorFlow's main branch now checks before rounding (§11.1). Kept as the
reference runs, though they read as slips: Solarize's threshold int(25.6 m) wraps to uint8
(m = 0 and 10 invert every pixel, m = 15 acts as m = 5); Posterize's shift is clamped to 7
(m < 2.5 keeps 1 bit, not 0); Contrast blends towards (pixel count / 256), not the mean grey
level. Float arithmetic follows TensorFlow's order; a platform that rounds differently could
move a pixel by one level, hence "±1".
"""

import math
import numbers

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from . import RANDAUGMENT_MAGNITUDES

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
       "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
       "Cutout", "SolarizeAdd")
SIGNED_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
MAX_LEVEL = 10.0  # the reference's _MAX_LEVEL: magnitude 10 is each op's "full" strength
TRANSLATE_CONST, CUTOUT_CONST = 100, 40  # px at magnitude 10 (the reference's RandAugment hparams)
FILL = 128
MAGNITUDE_RANGE = RANDAUGMENT_MAGNITUDES["reference"]
# tf.image.rgb_to_grayscale's weights
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def check_magnitude(magnitude):
    """`ConfigError` unless 0 ≤ magnitude < 22.5, where every op's argument is defined."""
    low, high = MAGNITUDE_RANGE
    if (not isinstance(magnitude, numbers.Real) or isinstance(magnitude, bool)
            or not low <= magnitude < high):
        raise ConfigError(f"RandAugment magnitude must be a number in [{low:g}, {high:g}) "
                          f"(Posterize keeps int(0.4·m) ≤ 8 bits), got {magnitude!r}")


def op_argument(name, magnitude, sign=1):
    """The argument the reference passes to op `name` at `magnitude`; `sign` (±1) replaces
    its random negation. None for ops without one. Python arithmetic in the reference's order,
    so the floats are the same."""
    level = float(magnitude) / MAX_LEVEL
    if name == "Rotate":
        return sign * (level * 30.0)  # degrees
    if name in ("ShearX", "ShearY"):
        return sign * (level * 0.3)
    if name in ("TranslateX", "TranslateY"):
        return sign * (level * float(TRANSLATE_CONST))  # pixels
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1  # blend factor: 1 is the identity
    integer = {"Posterize": 4, "Solarize": 256, "SolarizeAdd": 110, "Cutout": CUTOUT_CONST}
    return int(level * integer[name]) if name in integer else None


def blend(image1, image2, factor):
    """image1 + factor · (image2 − image1) in float32, truncated to uint8 (clipped first when
    extrapolating), as the reference's `blend` (whose shortcuts for factors 0 and 1 give the
    same pixels)."""
    start = image1.float()
    mixed = start + torch.tensor(factor, dtype=torch.float32) * (image2.float() - start)
    if not 0.0 < factor < 1.0:
        mixed = mixed.clamp(0.0, 255.0)
    return mixed.to(torch.uint8)


def grey(image):
    """(1, H, W) uint8 luma as tf.image.rgb_to_grayscale computes it: float32 in [0, 1], the
    weighted sum, then × 255.5 and truncated."""
    r, g, b = image.float() * torch.tensor(1.0 / 255.0, dtype=torch.float32)
    w_r, w_g, w_b = (torch.tensor(w, dtype=torch.float32) for w in GREY_WEIGHTS)
    luma = r * w_r + g * w_g + b * w_b
    return (luma * torch.tensor(255.5, dtype=torch.float32)).to(torch.uint8)[None]


def autocontrast(image, _):
    """Each channel stretched so its darkest pixel is 0 and its brightest 255."""
    pixels = image.float()
    low = pixels.amin(dim=(1, 2), keepdim=True)
    high = pixels.amax(dim=(1, 2), keepdim=True)
    # a true division: `255.0 / tensor` computes 255 · (1 / tensor), rounded differently
    scale = torch.tensor(255.0) / (high - low)
    stretched = (pixels * scale + (-low * scale)).clamp(0.0, 255.0).to(torch.uint8)
    return torch.where(high > low, stretched, image)


def equalize(image, _):
    """Each channel's histogram equalised with PIL's lookup table, in integers."""
    channels = []
    for channel in image.long():
        histogram = torch.bincount(channel.flatten(), minlength=256)
        present = histogram[histogram > 0]
        step = (present.sum() - present[-1]) // 255
        if step == 0:
            channels.append(channel)
            continue
        table = (histogram.cumsum(0) + step // 2) // step
        table = torch.cat([table.new_zeros(1), table[:-1]]).clamp(0, 255)
        channels.append(table[channel])
    return torch.stack(channels).to(torch.uint8)


def invert(image, _):
    return 255 - image


def posterize(image, bits):
    # TensorFlow clamps a uint8 shift to 7: 0 bits keeps the top bit
    shift = min(8 - bits, 7)
    return (image >> shift) << shift


def solarize(image, threshold):
    # the reference compares with a uint8 constant: the threshold wraps (256 → 0, 384 → 128)
    return torch.where(image < threshold % 256, image, 255 - image)


def solarize_add(image, addition):
    added = (image.long() + addition).clamp(0, 255).to(torch.uint8)
    return torch.where(image < 128, added, image)


def color(image, factor):
    return blend(grey(image), image, factor)


def contrast(image, factor):
    # the reference's "mean" sums the histogram's counts: the pixel count, not the grey level
    height, width = image.shape[-2:]
    level = int(min(height * width / 256.0, 255.0))
    return blend(torch.full_like(image[:1], level), image, factor)


def brightness(image, factor):
    return blend(torch.zeros_like(image[:1]), image, factor)


def sharpness(image, factor):
    """Blend with PIL's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13); the 1-px
    border keeps the original pixels."""
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=torch.float32) / 13.0
    smooth = F.conv2d(image.float()[None], kernel.expand(3, 1, 3, 3), groups=3)[0]
    smoothed = image.clone()
    smoothed[:, 1:-1, 1:-1] = smooth.clamp(0.0, 255.0).to(torch.uint8)
    return blend(smoothed, image, factor)


def project(image, coefficients):
    """tensorflow_addons' `transform` with nearest-neighbour sampling, as TensorFlow 2.15 runs
    it: output pixel (x, y), at integer coordinates, reads input (a0·x + a1·y + a2,
    b0·x + b1·y + b2) computed in float32 and rounded half away from zero; a rounded point
    outside the image gets FILL. `coefficients` (a0, a1, a2, b0, b1, b2) are float32."""
    height, width = image.shape[-2:]
    a0, a1, a2, b0, b1, b2 = coefficients
    x = torch.arange(width, dtype=torch.float32)[None, :]
    y = torch.arange(height, dtype=torch.float32)[:, None]
    column = round_half_away(a0 * x + a1 * y + a2).long()
    row = round_half_away(b0 * x + b1 * y + b2).long()
    inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    moved = image[:, row.clamp(0, height - 1), column.clamp(0, width - 1)]
    return torch.where(inside, moved, torch.full_like(moved, FILL))


def round_half_away(values):
    """Nearest integer, halves away from zero (std::round); torch.round takes halves to even."""
    magnitude = values.abs()
    floor = magnitude.floor()
    return (floor + (magnitude - floor >= 0.5)) * values.sign()


def rotate(image, degrees):
    """Counter-clockwise by `degrees` about the image centre (tfa.image.rotate)."""
    last_row, last_column = (torch.tensor(float(n - 1)) for n in image.shape[-2:])
    radians = torch.tensor(degrees, dtype=torch.float32) * torch.tensor(math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    x_offset = (last_column - (cos * last_column - sin * last_row)) / 2.0
    y_offset = (last_row - (sin * last_column + cos * last_row)) / 2.0
    return project(image, (cos, -sin, x_offset, sin, cos, y_offset))


def shear_x(image, level):
    return project(image, _float32(1.0, level, 0.0, 0.0, 1.0, 0.0))


def shear_y(image, level):
    return project(image, _float32(1.0, 0.0, 0.0, level, 1.0, 0.0))


def translate_x(image, pixels):
    """Content moves `pixels` to the left (the reference passes −pixels to tfa.translate)."""
    return project(image, _float32(1.0, 0.0, pixels, 0.0, 1.0, 0.0))


def translate_y(image, pixels):
    return project(image, _float32(1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def _float32(*values):
    return tuple(torch.tensor(v, dtype=torch.float32) for v in values)


def cutout(image, half_side, center):
    """FILL the square of side 2·half_side centred on `center` = (y, x), clipped to the image."""
    height, width = image.shape[-2:]
    y, x = center
    out = image.clone()
    out[:, max(0, y - half_side):min(height, y + half_side),
        max(0, x - half_side):min(width, x + half_side)] = FILL
    return out


FUNCTIONS = {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert,
             "Rotate": rotate, "Posterize": posterize, "Solarize": solarize, "Color": color,
             "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
             "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
             "TranslateY": translate_y, "SolarizeAdd": solarize_add}


def apply_op(image, name, magnitude, sign=1, cutout_center=None, generator=None):
    """Op `name` of `OPS` at `magnitude` on a uint8 (3, H, W) image, as the reference applies it.
    `sign` (±1) fixes Rotate/Shear/Translate's random negation; `cutout_center` = (y, x) fixes
    Cutout's centre, otherwise drawn uniformly from `generator`."""
    check_image(image)
    if name not in OPS:
        raise ConfigError(f"RandAugment op must be one of {OPS}, got {name!r}")
    check_magnitude(magnitude)
    if sign not in (1, -1):
        raise ConfigError(f"RandAugment sign must be 1 or -1, got {sign!r}")
    argument = op_argument(name, magnitude, sign)
    if name != "Cutout":
        return FUNCTIONS[name](image, argument)
    if cutout_center is None:
        height, width = image.shape[-2:]
        cutout_center = (int(torch.randint(height, (), generator=generator)),
                         int(torch.randint(width, (), generator=generator)))
    return cutout(image, argument, cutout_center)


def check_image(image):
    if not (isinstance(image, torch.Tensor) and image.dtype == torch.uint8
            and image.dim() == 3 and image.shape[0] == 3):
        got = (f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor)
               else type(image).__name__)
        raise InputError(f"RandAugment takes a uint8 (3, H, W) tensor, got {got}")


class RandAugment:
    """`num_layers` ops, each chosen uniformly from `OPS` and always applied at `magnitude`:
    the reference's `distort_image_with_randaugment`. uint8 (3, H, W) in and out.

    Each layer draws, from the caller's `torch.Generator`, the op, the sign (+ with
    probability 1/2) and Cutout's centre, whether or not the op uses them, so one image's
    draws never depend on which ops another image got."""

    def __init__(self, num_layers, magnitude):
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ConfigError(f"RandAugment layers must be an integer ≥ 0, got {num_layers!r}")
        check_magnitude(magnitude)
        self.num_layers, self.magnitude = num_layers, magnitude

    def __repr__(self):
        return f"RandAugment(num_layers={self.num_layers}, magnitude={self.magnitude})"

    def __call__(self, image, generator=None):
        check_image(image)
        height, width = image.shape[-2:]
        draws = torch.rand(self.num_layers, 4, dtype=torch.float64, generator=generator)
        for op_draw, sign_draw, y_draw, x_draw in draws.tolist():
            name = OPS[int(op_draw * len(OPS))]
            sign = 1 if sign_draw >= 0.5 else -1
            center = (int(y_draw * height), int(x_draw * width))
            image = apply_op(image, name, self.magnitude, sign, center)
        return image
