"""Released/exported weights as models: folding, features, loading with metadata, reference
preprocessing, folder evaluation, prediction, and the bad inputs around them."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from normfree import create_model
from normfree.errors import CheckpointError
from normfree.weights.metadata import export_weights
from normfree.errors import DataError, ExportError, NormfreeError
from normfree.weights.deploy import export_onnx, fold_ws
from normfree.data.transforms import image_transform
from normfree.nn.network import NFBlock
from normfree.nn.ws_conv import WSConv2d
from normfree.weights.pretrained import (imagenet_classes, load_pretrained, predict,
                                         reference_preprocessing)

from helpers import relative_error


def randomise_skip_gains(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("skip_gain"):
                p.copy_(torch.rand((), generator=g) + 0.5)
    return model


@pytest.mark.parametrize("name,size", [("nfnet_f0", 64), ("nf_resnet26", 65), ("nfnet_s0", 28),
                                       ("nf_regnet_b0", 64)])
def test_fold_ws_matches_unfolded_model(name, size):
    torch.manual_seed(0)
    model = randomise_skip_gains(create_model(name, 10, in_chans=3)).eval()
    torch.nn.init.normal_(model.head.fc.weight, 0.0, 0.01)  # some variants start it at 0
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        folded = fold_ws(model)
        got = folded(x)
    assert not any(isinstance(m, WSConv2d) for m in folded.modules())
    assert relative_error(got, expected) < 1e-5
    if name in ("nf_resnet26", "nf_regnet_b0"):  # no SE at the block end: α · skip gain went
        gains = [p.item() for n, p in folded.named_parameters() if n.endswith("skip_gain")]
        assert gains and all(g == 1.0 for g in gains)  # into the last conv of each block
        assert all(b.alpha == 1.0 for b in folded.modules() if isinstance(b, NFBlock))


def test_onnx_output_that_differs_is_an_export_error_and_removes_the_file(tmp_path,
                                                                          monkeypatch):
    onnxruntime = pytest.importorskip("onnxruntime")
    real_session = onnxruntime.InferenceSession

    class OffByOne(real_session):  # a runtime whose logits are all 1 too high
        def run(self, *args):
            return [logits + 1 for logits in super().run(*args)]
    monkeypatch.setattr(onnxruntime, "InferenceSession", OffByOne)
    path = tmp_path / "tiny.onnx"
    with pytest.raises(ExportError, match="ONNX output differs from PyTorch") as refused:
        export_onnx(create_model("nfnet_tiny", 4), path, image_size=16)
    assert isinstance(refused.value, NormfreeError)  # the command line prints one line
    assert not path.exists()


@pytest.mark.parametrize("name,size", [("nfnet_f0", 64), ("nf_resnet26", 64),
                                       ("nf_regnet_b0", 64), ("nfnet_s0", 28)])
def test_forward_stages_shapes_follow_feature_info(name, size):
    model = create_model(name, 10).eval()
    with torch.no_grad():
        maps = model.forward_stages(torch.randn(1, model.cfg.in_chans, size, size))
    info = model.feature_info
    assert len(maps) == len(info) == len(model.cfg.depths)
    for m, i in zip(maps, info):
        assert m.shape[1] == i["channels"]
        assert m.shape[-1] == -(-size // i["reduction"])


def test_reference_transform_resizes_the_whole_image_then_crops():
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (40, 70, 3), generator=g,
                                          dtype=torch.uint8).numpy())
    got = image_transform(32, 64)(image)
    resized = image.resize((64, 64), Image.BICUBIC)  # aspect ratio not kept (reference)
    expected = torch.from_numpy(np.array(resized.crop((16, 16, 48, 48))))
    assert got.shape == (3, 32, 32) and got.dtype == torch.uint8
    assert (got.permute(1, 2, 0).int() - expected.int()).abs().max() <= 1
    assert reference_preprocessing(256)["resize"] == 288


def test_imagenet_class_names_are_shipped():
    assert len(imagenet_classes()) == 1000 and len(set(imagenet_classes())) == 1000
    assert imagenet_classes()[0] == "tench" and imagenet_classes()[1] == "goldfish"


@pytest.fixture()
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    model = randomise_skip_gains(create_model("nfnet_tiny", 3))
    classes = ["ant", "bee", "cow"]
    path = tmp_path / "tiny.safetensors"
    export_weights(model, path, {"model": "nfnet_tiny", "numerics": "deepmind",
                                 "classes": classes, "preprocessing": reference_preprocessing(16)})
    return path, model.eval(), classes


def write_images(folder, count, seed, size=(24, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(count):
        pixels = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=g)
        paths.append(folder / f"{i}.png")
        Image.fromarray(pixels.numpy()).save(paths[-1])
    return paths


def test_load_pretrained_reads_metadata_and_predicts(tiny_weights, tmp_path):
    path, model, classes = tiny_weights
    pretrained = load_pretrained(path, device="cpu")
    assert pretrained.name == "nfnet_tiny" and pretrained.classes == tuple(classes)
    images = write_images(tmp_path / "img", 3, seed=1)
    top = predict(pretrained, images, top=2)
    x = torch.stack([pretrained.transform()(Image.open(p)) for p in images])
    with torch.no_grad():
        probs = model(pretrained.normalize()(x)).softmax(1)
    for row, p in zip(top, probs):
        assert len(row) == 2 and row[0][0] == classes[p.argmax()]
        assert row[0][1] == pytest.approx(p.max().item(), rel=1e-5)


def test_evaluate_folder_counts_exactly(tiny_weights, tmp_path):
    """Label half the images with the model's own prediction, half with another class: the
    folder evaluation must report exactly 50 % top-1 (classes mapped by folder name)."""
    path, _, classes = tiny_weights
    pretrained = load_pretrained(path, device="cpu")
    pool = write_images(tmp_path / "pool", 8, seed=2)
    predicted = [row[0][0] for row in predict(pretrained, pool, top=1)]
    root = tmp_path / "eval"
    for i, (image, label) in enumerate(zip(pool, predicted)):
        if i % 2:
            label = classes[(classes.index(label) + 1) % 3]
        (root / label).mkdir(parents=True, exist_ok=True)
        image.rename(root / label / image.name)
    result = pretrained.evaluate_folder(root, batch_size=3, progress=False)
    assert result["images"] == 8 and result["top1"] == 50.0 and result["top5"] == 100.0


def test_flat_folder_with_labels_file(tiny_weights, tmp_path):
    path, _, classes = tiny_weights
    pretrained = load_pretrained(path, device="cpu")
    images = write_images(tmp_path / "flat", 4, seed=3)
    predicted = [row[0][0] for row in predict(pretrained, images, top=1)]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{p.name},{classes.index(c)}\n" for p, c in zip(images, predicted)))
    result = pretrained.evaluate_folder(tmp_path / "flat", labels, progress=False)
    assert result["top1"] == 100.0
    labels.write_text(f"{images[0].name} zebra\n")
    with pytest.raises(DataError, match=r"labels.txt:1: label 'zebra'"):
        pretrained.evaluate_folder(tmp_path / "flat", labels, progress=False)


def test_unreadable_images_are_skipped_or_stop(tiny_weights, tmp_path):
    path, _, _ = tiny_weights
    pretrained = load_pretrained(path, device="cpu")
    write_images(tmp_path / "data" / "ant", 3, seed=4)
    broken = tmp_path / "data" / "ant" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = pretrained.evaluate_folder(tmp_path / "data", progress=False)
    assert result["images"] == 3 and result["skipped"] == 1
    with pytest.raises(DataError, match="broken.png"):
        pretrained.evaluate_folder(tmp_path / "data", bad_images="stop", progress=False)


def test_folder_problems_are_named(tiny_weights, tmp_path):
    path, _, _ = tiny_weights
    pretrained = load_pretrained(path, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        pretrained.evaluate_folder(tmp_path / "empty", progress=False)
    for name in ("x", "y"):  # 2 unknown class folders for 3-class weights
        write_images(tmp_path / "other" / name, 1, seed=5)
    with pytest.raises(DataError, match="2 class folders, but the weights have 3"):
        pretrained.evaluate_folder(tmp_path / "other", progress=False)
    with pytest.raises(DataError, match="no such directory"):
        pretrained.evaluate_folder(tmp_path / "missing", progress=False)


def test_metadata_class_count_must_match_the_classifier(tmp_path):
    path = tmp_path / "bad.safetensors"
    export_weights(create_model("nfnet_tiny", 3), path, {"model": "nfnet_tiny",
                                                         "classes": ["a", "b"]})
    with pytest.raises(CheckpointError, match="2 classes, the classifier has 3"):
        load_pretrained(path, device="cpu")


@pytest.mark.parametrize("name,size", [("nfnet_s0", 28), ("nf_resnet26", 64)])
def test_onnx_export_matches_pytorch(name, size, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is part of the test install")
    import onnxruntime

    from normfree.weights.deploy import export_onnx
    torch.manual_seed(0)
    model = randomise_skip_gains(create_model(name, 10, in_chans=3)).eval()
    error = export_onnx(model, tmp_path / "m.onnx", size)
    assert error < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.randn(3, 3, size, size)  # another batch size: the batch axis is dynamic
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert relative_error(torch.from_numpy(logits), model(x)) < 1e-4
    assert any(isinstance(m, WSConv2d) for m in model.modules())  # the caller's model unfolded


def test_load_pretrained_refuses_weights_of_another_layout(tmp_path):
    model = create_model("nfnet_tiny", 3)
    export_weights(model, tmp_path / "same.safetensors", {"model": "nfnet_tiny"})
    model.cfg = replace(model.cfg, strides=(2, 2))  # as saved by a version with other strides
    export_weights(model, tmp_path / "other.safetensors", {"model": "nfnet_tiny"})
    with pytest.raises(CheckpointError, match=r"strides \[2, 2\] \(this version: \[1, 2\]\)"):
        load_pretrained(tmp_path / "other.safetensors", device="cpu")
    assert load_pretrained(tmp_path / "same.safetensors", device="cpu").name == "nfnet_tiny"


@pytest.mark.parametrize("bad", ["hf-hub:", "hf-hub:no_owner", "hf-hub:a/b/c"])
def test_malformed_hub_id_is_refused_before_any_lookup(bad):
    with pytest.raises(CheckpointError, match="hf-hub:OWNER/NAME"):
        load_pretrained(bad)
