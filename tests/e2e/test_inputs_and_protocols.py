"""Bounded inputs, labels files, the hub without a network, stated evaluation protocols,
unreadable folders and the smaller points of issue 38 (items 8-13), through the CLI."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from normfree.cli import main

DEBUG = ["--preset", "debug", "--no-progress"]


def cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own answers (--help)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(code, err, *fragments):
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and all(f in err for f in fragments), err


def image_folder(root, per_class=12, size=20, seed=0):
    """root/{train,test}/{c0,c1}/*.png: random images, class 1 brighter."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label in (0, 1):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 156, (size, size, 3)) + 100 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A debug run on an image folder, with flip TTA, and its data."""
    root = tmp_path_factory.mktemp("folder")
    data = image_folder(root / "data")
    out = root / "run"
    assert main(["train", *DEBUG, "--dataset", "folder", "--data-dir", str(data),
                 "--image-size", "16", "--val-size", "4", "--epochs", "2", "--batch-size", "8",
                 "--tta-flip", "--workers", "0", "--out-dir", str(out)]) == 0
    return data, out


def test_run_checkpoint_and_weights_report_the_same_accuracy_with_the_same_protocol(
        folder_run, capsys):
    data, out = folder_run
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == {"crop": 16, "resize": 48, "tta_flip": True,
                                   "weights": results["weights"], "precision": "fp32"}
    code, from_checkpoint, _ = cli(capsys, "eval", "--checkpoint", out)
    assert code == 0 and "16 px (centre crop of 48), flip TTA" in from_checkpoint
    code, from_weights, _ = cli(capsys, "eval", "--weights", out / "model.safetensors", "--data",
                                data / "test", "--tta-flip", "--batch-size", "128")
    assert code == 0 and "flip TTA" in from_weights
    top1 = f"top-1 {results['test_top1']:.2f}%"
    assert top1 in from_checkpoint and top1 in from_weights
    code, plain, _ = cli(capsys, "eval", "--weights", out / "model.safetensors", "--data",
                         data / "test")
    assert code == 0 and "no TTA" in plain


def test_sizes_that_cannot_fit_are_refused_before_allocating(folder_run, tmp_path, capsys):
    _, out = folder_run
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    code, _, err = cli(capsys, "predict", image, "--weights", out / "model.safetensors",
                       "--image-size", "100000")
    refused(code, err, "--image-size 100000", "at most 2048")
    code, _, err = cli(capsys, "train", *DEBUG, "--image-size", "100000", "--out-dir",
                       tmp_path / "big")
    refused(code, err, "--image-size 100000", "GiB", "free")
    code, _, err = cli(capsys, "train", *DEBUG, "--batch-size", "1000000000", "--out-dir",
                       tmp_path / "big")
    refused(code, err, "--batch-size 1000000000", "GiB")
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("encoding,separator", [("utf-8-sig", "\t"), ("utf-16", " "),
                                                ("utf-8", " ,")])
def test_labels_files_in_common_encodings_and_names_with_spaces(encoding, separator,
                                                                 folder_run, tmp_path, capsys):
    data, out = folder_run
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = []
    for label in (0, 1):
        for i in range(4):
            name = f"image {label} {i}.png"  # names with spaces
            (flat / name).write_bytes((data / "test" / f"c{label}" / f"{i}.png").read_bytes())
            lines.append(f"{name}{separator}c{label}")
    labels = tmp_path / "labels.txt"
    labels.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    code, printed, err = cli(capsys, "eval", "--weights", out / "model.safetensors", "--data",
                             flat, "--labels", labels)
    assert code == 0, err
    assert "(8 images;" in printed


def test_labels_file_in_another_encoding_is_refused_naming_the_line(folder_run, tmp_path,
                                                                      capsys):
    _, out = folder_run
    (tmp_path / "flat").mkdir()
    labels = tmp_path / "labels.txt"
    labels.write_bytes("a.png c0\ncafé.png c1\n".encode("latin-1"))
    code, _, err = cli(capsys, "eval", "--weights", out / "model.safetensors", "--data",
                       tmp_path / "flat", "--labels", labels)
    refused(code, err, f"{labels}:2: not UTF-8 text (byte 0xe9)")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_without_network_fails_fast_and_quietly(tmp_path):
    pytest.importorskip("huggingface_hub")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    env.pop("HF_HUB_OFFLINE", None)
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "normfree", "predict", "x.png", "--weights",
                             "hf-hub:timm/eca_nfnet_l0.ra2_in1k"], env=env, capture_output=True,
                            text=True, timeout=120)
    seconds = time.time() - started
    refused(result.returncode, result.stderr, "not in the Hugging Face cache",
            "cannot be reached", "HF_HUB_OFFLINE")
    assert "Retrying" not in result.stdout + result.stderr
    assert seconds < 15, seconds  # was ~50 s of retries


def test_a_folder_of_unreadable_images_is_refused_before_the_run_folder(tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "test"):
        for label in ("c0", "c1"):
            (data / split / label).mkdir(parents=True)
            for i in range(3):
                (data / split / label / f"{i}.png").write_text("not an image")
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", *DEBUG, "--dataset", "folder", "--data-dir", data,
                       "--val-size", "2", "--workers", "0", "--out-dir", out)
    refused(code, err, "no readable training images (all 4 fail", "no readable validation "
            "images (all 2 fail", "no readable test images (all 6 fail", "unreadable image")
    assert not out.exists()


def test_help_is_for_users(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "Normalizer-free networks" in out and "thin map" not in out


def test_settings_header_omits_epochs_when_steps_set_the_length(tmp_path, capsys):
    code, out, _ = cli(capsys, "train", *DEBUG, "--steps", "3", "--out-dir", tmp_path / "run")
    assert code == 0 and "--steps" in out and "--epochs" not in out


def test_divergence_advice_fits_the_run(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *DEBUG, "--lr", "1e30", "--clip-factor", "0",
                       "--out-dir", tmp_path / "run")
    refused(code, err, "training diverged", "AGC (--clip-factor 0.01)",
            "no checkpoint had been written")
    assert "smaller --clip-factor" not in err


def test_predict_goes_on_past_an_unreadable_image(folder_run, tmp_path, capsys):
    data, out = folder_run
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = data / "test" / "c1" / "0.png"
    code, printed, err = cli(capsys, "predict", bad, good, "--weights",
                             out / "model.safetensors")
    assert code == 1 and "Traceback" not in err
    assert f"{bad}: unreadable image" in err and str(good) in printed
    assert printed.count("%") == 2  # the good image's two classes


def test_eval_json_into_an_unwritable_folder_fails_before_evaluating(folder_run, capsys):
    data, out = folder_run
    code, printed, err = cli(capsys, "eval", "--weights", out / "model.safetensors", "--data",
                             data / "test", "--json", "/proc/result.json")
    refused(code, err, "--json /proc/result.json: cannot write in /proc")
    assert "top-1" not in printed


def test_finetuning_takes_the_weights_own_training_size(tmp_path, capsys):
    source = tmp_path / "source"
    assert main(["train", *DEBUG, "--image-size", "24", "--epochs", "1", "--out-dir",
                 str(source)]) == 0
    out = tmp_path / "tuned"
    code, _, err = cli(capsys, "train", "--preset", "finetune", "--init-from",
                       source / "model.safetensors", "--dataset", "synthetic", "--steps", "2",
                       "--val-size", "128", "--synthetic-size", "512", "--no-progress",
                       "--out-dir", out)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["image_size"] == 24
