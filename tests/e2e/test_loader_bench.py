"""`normfree bench --loader`: both loaders read the same generated JPEG folder and the record's
ratio is what its two rates say."""

from PIL import Image

from normfree.analysis.loader_bench import bench_loader, write_photo_folder


def test_generated_folder_is_imagenet_like(tmp_path):
    root = write_photo_folder(tmp_path / "photos", images_per_class=8, classes=2)
    photos = sorted((root / "train").rglob("*.jpg"))
    assert len(photos) == 16 and len(list((root / "val").rglob("*.jpg"))) == 2
    sizes = {Image.open(p).size for p in photos}
    assert len(sizes) > 8  # varied sizes and aspect ratios
    assert all(300 <= w <= 500 and 262 <= h <= 438 for w, h in sizes)


def test_loader_record_compares_with_timm_on_the_same_images(tmp_path):
    record = bench_loader(batch_size=8, image_size=64, workers=0, batches=2, rounds=1,
                          peer="timm")
    assert record["normfree_img_s_per_worker"] > 0 and record["timm_img_s_per_worker"] > 0
    ratio = record["normfree_img_s_per_worker"] / record["timm_img_s_per_worker"]
    assert abs(record["ratio"] - ratio) < 0.01 * ratio
