"""Write tests/fixtures/reference/*.npz by running DeepMind's own NFNet input-pipeline code.

The fixtures prove normfree.data.randaugment, reference_crops and mixing against the reference
(docs/architecture.md §11.1). TensorFlow is never a dependency of normfree: this script runs in
a separate environment, outside the repository.

1. The environment (Python 3.11):

       python3 -m venv /work/tfenv
       /work/tfenv/bin/pip install "tensorflow-cpu==2.15.1" "tensorflow-addons==0.23.0" \\
           "numpy<2" scikit-image

2. The reference's files, unmodified, from github.com/google-deepmind/deepmind-research:
   `nfnets/autoaugment.py` (commit abc9ba0635da9a9e5c57b124fe004151cd5cbd38) and
   `nfnets/dataset.py` (commit 712d4bbf8810f95fea9ef374e0d6b304f7980f57), saved as
   /work/tfenv/reference/nfnets/autoaugment.py and /work/tfenv/reference/nfnets/dataset.py.

3. From the repository root:

       /work/tfenv/bin/python scripts/make_reference_fixtures.py \\
           --reference-dir /work/tfenv/reference

What is stubbed or pinned, and how:

- Imports the used functions do not need get empty stand-ins (jax, jax.numpy,
  tensorflow_datasets, tensorflow_probability: only type annotations read them), and
  ml_collections' ConfigDict becomes a SimpleNamespace. Python 3.11 has no
  `inspect.getargspec`, which autoaugment.py calls; `inspect.getfullargspec` stands in
  (its first field is the same argument list).
- RandAugment runs as the reference's `distort_image_with_randaugment(image, 1, magnitude)`,
  traced in graph mode as tf.data runs it, with the module's `tf` replaced by a proxy whose
  `random_uniform` returns pinned values: the op index (the int32 draw with maxval 16), 0.75
  or 0.25 for the sign draw (`floor(u + 0.5)` keeps the sign for 0.75, negates for 0.25), the
  Cutout centre (the two int32 draws whose maxval is the image's height and width) and 0.5 for
  the unused per-op probabilities. Op order, level→argument mapping, hparams and fill are the
  reference's own.
- The training resize runs the reference's `_preprocess_image(..., is_training=True)` with
  `_decode_and_random_crop` returning the given crop and the flip switched off.
- `cutmix_padding` runs with `tf.random.uniform` pinned to given centres and uniform draws;
  `my_mixup_cutmix` and `_augment_image`'s clip-and-cast (RandAugment switched off) are
  deterministic given their inputs.
- The crop sampler cannot share TensorFlow's random stream: the fixture holds 4000 windows from
  `_decode_and_random_crop` per image shape (tf.random.set_seed(0)) for distribution tests;
  a 20 × 400 image, where no window of aspect 3/4–4/3 has 8 % of the area, shows the fallback.
"""

import argparse
import inspect
import io
import sys
import types
from pathlib import Path

import numpy as np

SAMPLES = 4000  # crop windows per shape: KS distance of two such samples ≈ 0.02
MAGNITUDES = (0, 5, 10, 15)
CUTOUT_CENTERS = ((12, 30), (47, 0))  # one inside, one at a corner (the square is clipped)


def import_reference(reference_dir):
    """The reference's autoaugment and dataset modules, with stand-ins for what they import
    but the used functions never call."""
    inspect.getargspec = inspect.getfullargspec
    ml_collections = types.ModuleType("ml_collections")
    ml_collections.config_dict = types.SimpleNamespace(
        ConfigDict=lambda values: types.SimpleNamespace(**values))
    jax, jnp = types.ModuleType("jax"), types.ModuleType("jax.numpy")
    jnp.dtype, jnp.float32, jnp.bfloat16 = object, "float32", "bfloat16"
    jax.numpy = jnp
    tfds = types.ModuleType("tensorflow_datasets")
    tfds.Split = object
    sys.modules.update({"ml_collections": ml_collections, "jax": jax, "jax.numpy": jnp,
                        "tensorflow_datasets": tfds,
                        "tensorflow_probability": types.ModuleType("tensorflow_probability")})
    sys.path.insert(0, str(reference_dir))
    from nfnets import autoaugment, dataset
    return autoaugment, dataset


class Proxy:
    """A module whose named attributes are replaced, the rest read from the module."""

    def __init__(self, module, **replaced):
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced.get(name, getattr(self._module, name))


def sample_images():
    """name → uint8 (48, 40, 3): three photos (two downscaled, one native crop) and synthetic
    images (smooth low-contrast, 1-px checkerboard, flat). No noise image: it would not
    compress, and the checkerboard is harsher."""
    from PIL import Image
    from skimage import data
    rng = np.random.default_rng(0)
    small = (40, 48)  # PIL's (width, height)
    yy, xx = np.mgrid[:48, :40]
    smooth = (np.stack([60 + 2 * yy, 90 + 2 * xx, 150 - yy - xx], -1)
              + rng.integers(0, 8, (48, 40, 3)))
    checker = ((yy + xx) % 2)[..., None] * np.array([255, 200, 30]) + 10
    return {
        "astronaut": np.asarray(Image.fromarray(data.astronaut()).resize(small, Image.LANCZOS)),
        "coffee": np.asarray(Image.fromarray(data.coffee()).resize(small, Image.LANCZOS)),
        "chelsea": data.chelsea()[80:128, 150:190],
        "smooth": smooth.clip(0, 255).astype(np.uint8),
        "checkerboard": checker.astype(np.uint8),
        "flat": np.full((48, 40, 3), (90, 140, 200), np.uint8),
    }


def randaugment_fixture(autoaugment, tf, images):
    """Each op at each magnitude, both signs for the signed ops, two Cutout centres."""
    ops = ['AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'Color',
           'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX',
           'TranslateY', 'Cutout', 'SolarizeAdd']
    signed = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}
    batch = np.stack(list(images.values()))
    keys, outputs = [], []
    for index, name in enumerate(ops):
        for magnitude in MAGNITUDES:
            for sign in ((1, -1) if name in signed else (1,)):
                for center in (CUTOUT_CENTERS if name == "Cutout" else (None,)):
                    run = pinned_randaugment(autoaugment, tf, index, magnitude, sign, center)
                    outputs.append(np.stack([run(image).numpy() for image in batch]))
                    keys.append(f"{name}|{magnitude}|{sign}|{center}")
    return {"names": np.array(list(images)), "images": batch, "keys": np.array(keys),
            "outputs": np.stack(outputs)}


def pinned_randaugment(autoaugment, tf, op_index, magnitude, sign, center):
    """The reference's one-layer RandAugment as a graph function, its draws pinned."""
    tf1 = tf.compat.v1
    center_draws = []

    def random_uniform(shape, minval=0, maxval=None, dtype=tf.float32, **_):
        if dtype == tf.int32 and isinstance(maxval, int):
            return tf.constant(op_index, tf.int32)
        if dtype == tf.int32:  # Cutout: the centre's row, then its column
            picked = center_draws.pop(0)
            return tf.constant(picked, tf.int32)
        if minval == 0.2:
            return tf.constant(0.5)
        return tf.constant(0.75 if sign > 0 else 0.25)

    @tf.function
    def run(image):
        center_draws[:] = list(center or (0, 0))
        autoaugment.tf = Proxy(tf1, random_uniform=random_uniform)
        try:
            return autoaugment.distort_image_with_randaugment(image, 1, magnitude)
        finally:
            autoaugment.tf = tf1

    return run


def png(image):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def crop_fixture(dataset, tf):
    """Evaluation resize-crops, training resizes, centre-crop windows and sampled windows."""
    from PIL import Image
    from skimage import data
    yy, xx = np.mgrid[:150, :130]
    checker = (((yy + xx) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    eval_inputs = {
        "astronaut": np.asarray(Image.fromarray(data.astronaut()).resize((100, 120),
                                                                          Image.LANCZOS)),
        "coffee": data.coffee()[100:160, 200:290],
        "chelsea": data.chelsea()[40:190, 100:300],
        "checker_small": checker[:64, :56],
        "checker_large": checker,
    }
    size = 48
    fixture = {}
    for name, image in eval_inputs.items():
        # decode_jpeg also decodes PNG: lossless input into the reference's own function
        out = dataset._decode_and_resize_then_crop(tf.constant(png(image)), (size, size), 32.0)
        fixture[f"eval_in_{name}"], fixture[f"eval_out_{name}"] = image, out.numpy()
    dataset_tf = dataset.tf
    dataset.tf = Proxy(dataset_tf, image=Proxy(dataset_tf.image,
                                               random_flip_left_right=lambda image: image))
    dataset._decode_and_random_crop, random_crop = (lambda crop, size: crop,
                                                    dataset._decode_and_random_crop)
    for name, crop in {"up": eval_inputs["astronaut"][20:57, 30:83],
                       "down": eval_inputs["checker_large"][:110, :90],
                       "photo_down": eval_inputs["chelsea"][:110, :90]}.items():
        out = dataset._preprocess_image(tf.constant(crop), True, (size, size))
        fixture[f"train_in_{name}"], fixture[f"train_out_{name}"] = crop, out.numpy()
    dataset.tf, dataset._decode_and_random_crop = dataset_tf, random_crop
    fixture.update(window_fixture(dataset, tf))
    return fixture


def coordinates(tf, height, width):
    """int32 (H, W, 3) image whose pixels hold their own row and column: a crop of it shows
    its window."""
    yy, xx = np.mgrid[:height, :width]
    return tf.constant(np.stack([yy, xx, yy], -1).astype(np.int32))


def window(crop):
    crop = crop.numpy()
    return (crop[0, 0, 0], crop[0, 0, 1], crop.shape[0], crop.shape[1])


def window_fixture(dataset, tf):
    center_cases = [(375, 500, 224), (500, 375, 224), (256, 256, 224), (100, 90, 64),
                    (480, 640, 288), (333, 517, 192), (64, 64, 64), (257, 1000, 320)]
    centers = [window(dataset._decode_and_center_crop(coordinates(tf, h, w),
                                                      tf.constant([h, w, 3]), (s, s)))
               for h, w, s in center_cases]
    fixture = {"center_cases": np.array(center_cases), "center_windows": np.array(centers)}
    tf.random.set_seed(0)
    for h, w, s in [(120, 90, 64), (64, 256, 48), (50, 50, 32), (20, 400, 16)]:
        image = coordinates(tf, h, w)
        crop = tf.function(lambda image=image, s=s: dataset._decode_and_random_crop(image, (s, s)))
        fixture[f"windows_{h}x{w}_{s}"] = np.array([window(crop()) for _ in range(SAMPLES)],
                                                   dtype=np.int16)
    return fixture


def mixing_fixture(autoaugment, dataset, tf):
    """Pinned CutMix boxes, one `my_mixup_cutmix` batch, `_augment_image`'s clip and cast."""
    cases = [(12, 10, 5, 6, 0.3), (12, 10, 0, 0, 0.0), (12, 10, 11, 9, 0.5),
             (9, 16, 4, 15, 0.999), (12, 10, 6, 2, 0.75), (7, 7, 3, 3, 0.1)]
    masks = []
    for h, w, center_y, center_x, uniform in cases:
        draws = [center_x, center_y, uniform]  # the reference draws r_x first

        def pinned_uniform(shape, minval=0, maxval=None, dtype=tf.float32, draws=draws):
            return tf.constant(draws.pop(0), dtype)

        dataset_tf = dataset.tf
        dataset.tf = Proxy(dataset_tf, random=Proxy(dataset_tf.random, uniform=pinned_uniform))
        masks.append(np.pad(dataset.cutmix_padding(h, w).numpy()[..., 0],
                            ((0, 12 - h), (0, 16 - w))))
        dataset.tf = dataset_tf
    rng = np.random.default_rng(1)
    batch = {"images": rng.uniform(-40, 300, (8, 6, 5, 3)).astype(np.float32),
             "labels": np.arange(8, dtype=np.int32) * 3,
             "mixup_ratio": rng.beta(0.2, 0.2, 8).astype(np.float32),
             "mask": (rng.uniform(size=(8, 6, 5, 1)) < 0.5).astype(np.float32)}
    batch["cutmix_ratio"] = batch["mask"].mean(axis=(1, 2, 3))
    mixed = dataset.my_mixup_cutmix({k: tf.constant(v) for k, v in batch.items()})
    autoaugment_run = autoaugment.distort_image_with_randaugment
    autoaugment.distort_image_with_randaugment = lambda image, num_layers, magnitude: image
    floats = rng.uniform(-60, 320, (6, 5, 3)).astype(np.float32)
    cast = dataset._augment_image(tf.constant(floats), True, "cutmix_mixup_randaugment_405")
    autoaugment.distort_image_with_randaugment = autoaugment_run
    return {"cutmix_cases": np.array(cases), "cutmix_masks": np.array(masks),
            **{f"batch_{k}": v for k, v in batch.items()},
            **{f"mixed_{k}": v.numpy() for k, v in mixed.items()},
            "cast_in": floats, "cast_out": cast.numpy()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", required=True, type=Path,
                        help="folder holding nfnets/autoaugment.py and nfnets/dataset.py")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/reference"))
    args = parser.parse_args()
    autoaugment, dataset = import_reference(args.reference_dir)
    import tensorflow as tf
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "randaugment.npz",
                        **randaugment_fixture(autoaugment, tf, sample_images()))
    np.savez_compressed(args.out / "crops.npz", **crop_fixture(dataset, tf))
    np.savez_compressed(args.out / "mixing.npz", **mixing_fixture(autoaugment, dataset, tf))
    for path in sorted(args.out.glob("*.npz")):
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
