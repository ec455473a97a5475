import gzip

import pytest
import torch

from normfree.data.batches import TensorBatches
from normfree.data.datasets import holdout_split, make_data
from normfree.data.spec import DataSpec
from normfree.data.fashion_mnist import load_fashion_mnist, read_idx
from normfree.data.transforms import small_image_transform
from normfree.errors import DataError
from normfree.training.config import preset
from normfree.training.specs import spec_from

from helpers import idx_bytes, write_fmnist


def test_read_idx_roundtrip(tmp_path):
    array = torch.arange(24, dtype=torch.uint8).view(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array)))
    assert torch.equal(read_idx(tmp_path / "a.idx"), array)
    assert torch.equal(read_idx(tmp_path / "a.idx.gz"), array)


def test_read_idx_rejects_bad_files_by_name(tmp_path):
    good = idx_bytes(torch.zeros(2, 2, dtype=torch.uint8))
    cases = {"magic.idx": b"\x01\x02" + good[2:], "type.idx": good[:2] + b"\x0d" + good[3:],
             "short.idx": good[:-1], "empty.idx": b"", "header.idx": good[:6]}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataError, match=name):
            read_idx(tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_loader(tmp_path):
    splits = load_fashion_mnist(write_fmnist(tmp_path))
    images, labels = splits["train"]
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and len(splits["test"][1]) == 10


def test_missing_dataset_message_has_install_command(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_holdout_split_is_disjoint_and_fixed():
    images, labels = torch.arange(100).view(100, 1, 1, 1), torch.arange(100)
    (_, train_y), (_, val_y) = holdout_split(images, labels, 10)
    assert len(val_y) == 10 and len(train_y) == 90
    assert not set(val_y.tolist()) & set(train_y.tolist())
    assert torch.equal(holdout_split(images, labels, 10)[1][1], val_y)


def test_batches_cover_the_data_and_augment_per_image():
    images = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 10:18, 10:18] = 255
    transform = small_image_transform(28, crop_padding=4, flip=True, randaugment=None,
                                      random_erasing=0.0)
    batches = TensorBatches(images, torch.arange(10), 4, shuffle=True, transform=transform)
    torch.manual_seed(0)
    out = list(batches)
    assert [len(y) for _, y in out] == [4, 4, 2]
    assert sorted(torch.cat([y for _, y in out]).tolist()) == list(range(10))
    shifted = torch.cat([x for x, _ in out])
    assert shifted.dtype == torch.uint8
    centres = {tuple(torch.nonzero(x[0]).float().mean(0).tolist()) for x in shifted}
    assert len(centres) > 1  # crops differ between images of the same batch


def test_image_folder_tree(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8, generator=g)
                Image.fromarray(pixels.numpy()).save(tmp_path / split / cls / f"{i}.png")
    cfg = preset("debug", dataset="folder", data_dir=str(tmp_path), image_size=32, val_size=4,
                 batch_size=8, eval_batch_size=8)
    data = make_data(spec_from(DataSpec, cfg))
    assert data.classes == ("cat", "dog") and data.in_chans == 3
    images, labels = next(iter(data.train))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
    assert sum(len(y) for _, y in data.val) == 4
    assert sum(len(y) for _, y in data.test) == 8


def test_folder_without_train_subfolder_is_explained(tmp_path):
    with pytest.raises(DataError, match="data_dir .*'train' subfolder") as missing:
        make_data(spec_from(DataSpec, preset("debug", dataset="folder",
                                             data_dir=str(tmp_path))))
    assert missing.value.fields == ("data_dir",)
