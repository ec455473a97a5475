"""A miniature ImageNet run, end to end: a generated JPEG folder (varied sizes and aspect
ratios, greyscale and CMYK among them) through `--preset imagenet-f0` with a tiny model and a
few steps, in 2 processes; stopped and resumed; its weights exported to ONNX, evaluated at the
test size with `eval --weights`, and used by `predict`."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from normfree.analysis.loader_bench import photo_like
from normfree.training.checkpoints import read_checkpoint
from normfree.training.logs import read_metrics

from helpers import cli, wait_for_checkpoint

CLASSES, PER_CLASS, BATCH, EPOCHS = 3, 16, 8, 3
STEPS = EPOCHS * CLASSES * PER_CLASS // BATCH
TINY = ["--model", "nfnet_tiny", "--image-size", "32", "--test-size", "48", "--batch-size",
        str(BATCH), "--epochs", str(EPOCHS), "--eval-batch-size", "8", "--workers", "1",
        "--checkpoint-every", "1", "--no-progress"]


def write_imagenet_like(root, seed=0):
    """train/ and val/ class folders of JPEGs 40-120 px a side, every fifth greyscale and
    every seventh CMYK."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", PER_CLASS), ("val", 3)):
        for c in range(CLASSES):
            folder = root / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                image = photo_like(rng, int(rng.integers(40, 120)), int(rng.integers(40, 120)))
                mode = "L" if i % 5 == 0 else "CMYK" if i % 7 == 0 else "RGB"
                image.convert(mode).save(folder / f"{i}.JPEG", quality=85)
    return root


def train(data, out, *extra):
    return [sys.executable, "-m", "normfree", "train", "--preset", "imagenet-f0", "--data-dir",
            str(data), *TINY, "--out-dir", str(out), "--nproc", "2", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The run, stopped by SIGTERM after its third step and resumed to the end."""
    root = tmp_path_factory.mktemp("imagenet")
    data, out = write_imagenet_like(root / "data"), root / "run"
    process = subprocess.Popen(train(data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_for_checkpoint(process, out / "checkpoint.pt", 3)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    stopped = read_checkpoint(out / "checkpoint.pt").step
    resumed = subprocess.run(train(data, out, "--resume"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return data, out, stopped, resumed.stdout


def test_the_stopped_run_resumes_to_the_end_of_the_recipe(run):
    data, out, stopped, printed = run
    assert 3 <= stopped < STEPS and f"from step {stopped}" in printed
    assert read_checkpoint(out / "checkpoint.pt").step == STEPS
    assert [row["epoch"] for row in read_metrics(out / "metrics.csv")] == list(
        range(1, EPOCHS + 1))


def test_results_report_raw_and_ema_at_the_test_size_choosing_nothing_on_val(run):
    _, out, _, _ = run
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == {"crop": 48, "resize": 80, "tta_flip": False,
                                   "weights": "ema", "precision": "fp32"}
    assert results["selected_on"] is None and results["weights"] == "ema"
    assert set(results["test_by_weights"]) == {"raw", "ema"}
    assert all(r["images"] == CLASSES * 3 for r in results["test_by_weights"].values())
    assert results["test_top1"] == results["test_by_weights"]["ema"]["top1"]
    config = json.loads((out / "config.json").read_text())
    assert config["pipeline"] == "reference" and config["randaugment"] == [4, 5]


def test_exported_weights_evaluate_and_predict_as_the_run_did(run, tmp_path, capsys):
    data, out, _, _ = run
    weights = out / "model.safetensors"
    results = json.loads((out / "results.json").read_text())
    code, printed, _ = cli(capsys, "eval", "--weights", weights, "--data", data / "val")
    assert code == 0 and "48 px (centre crop of 80), no TTA" in printed
    assert f"top-1 {results['test_top1']:.2f}%" in printed
    greyscale = next((data / "val").rglob("0.JPEG"))
    code, printed, _ = cli(capsys, "predict", "--weights", weights, greyscale)
    assert code == 0 and "n0000000" in printed
    code, printed, _ = cli(capsys, "export", "--weights", weights, "--onnx", tmp_path / "m.onnx")
    assert code == 0 and (tmp_path / "m.onnx").stat().st_size > 0
