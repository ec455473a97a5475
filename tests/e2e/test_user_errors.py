"""Each plain mistake, typed as a user would, gets exit code 2 and a one-line answer naming the
flag or file, never a traceback; nothing is written before the checks pass."""

import fractions
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import normfree
from normfree.cli import main

from helpers import assert_refused, cli


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    run = tmp_path_factory.mktemp("w") / "run"
    assert main(["train", "--preset", "debug", "--epochs", "1", "--no-progress",
                 "--out-dir", str(run)]) == 0
    return run


@pytest.mark.parametrize("flags,fragments", [
    (["--model", "nope"], ["--model must be one of", "nfnet_f0"]),
    (["--optimizer", "adam"], ["--optimizer must be one of sgd, adamw"]),
    (["--dataset", "folder", "--data-dir", "missing"],
     ["--data-dir missing: expected", "'train' subfolder"]),  # data's field shown as the flag
    (["--init-from", "missing.safetensors"], ["missing.safetensors does not exist"]),
    (["--device", "tpu"], ["--device 'tpu' is not a device name"]),
    (["--lr", "inf"], ["--lr must be a finite number"]),
    (["--workers", "-1"], ["--workers must be 0 or more"]),
    (["--eval-every", "-1"], ["--eval-every must be 0 or more"]),
    (["--randaugment", "4"], ["--randaugment must be LAYERS,MAGNITUDE"]),
    (["--epoch", "1"], ["usage: normfree train", "unrecognized arguments: --epoch 1"]),
])
def test_train_mistakes_are_refused_before_anything_is_written(flags, fragments, tmp_path,
                                                               capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--preset", "debug", "--out-dir", run, *flags)
    assert_refused(code, err, *fragments)
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--preset", "debug", "--device", "cuda",
                       "--out-dir", tmp_path / "run")
    assert_refused(code, err, "--device cuda", "no CUDA GPU")
    assert not (tmp_path / "run").exists()


def test_out_dir_naming_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    code, _, err = cli(capsys, "train", "--preset", "debug", "--out-dir", tmp_path / "file")
    assert_refused(code, err, "is a file, not a directory")
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("argv,fragment", [
    (["bench", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["bench", "--repeats", "0"], "--repeats: must be at least 1"),
    (["predict", "--weights", "w", "--top", "0", "x.png"], "--top: must be at least 1"),
])
def test_counts_below_one_are_refused(argv, fragment, capsys):
    assert_refused(*cli(capsys, *argv)[::2], fragment)


@pytest.mark.parametrize("kind,fragment", [
    ("random", "not a weights file normfree can read"),
    ("numpy", "a numpy .npz archive of arrays"),
    ("objects", "holds Python objects other than tensors"),
])
def test_unreadable_weights_files_are_named(kind, fragment, tmp_path, capsys):
    path = tmp_path / ("w.pth" if kind == "objects" else "w.npz")
    if kind == "random":
        path.write_bytes(bytes(range(256)) * 2)
    elif kind == "numpy":
        np.savez(path, a=np.zeros(3))
    else:
        torch.save({"w": fractions.Fraction(1, 2)}, path)
    code, _, err = cli(capsys, "convert", path, tmp_path / "out.safetensors")
    assert_refused(code, err, str(path), fragment)
    assert "weights_only" not in err and not (tmp_path / "out.safetensors").exists()


def test_output_files_need_an_existing_folder(weights, tmp_path, capsys):
    """The rule for every output file: normfree creates run directories, nothing else."""
    missing = tmp_path / "missing" / "dir"
    code, _, err = cli(capsys, "export", "--weights", weights / "model.safetensors", "--onnx",
                       missing / "model.onnx")
    assert_refused(code, err, "--onnx", "the folder", "does not exist")
    code, _, err = cli(capsys, "eval", "--checkpoint", weights, "--json", missing / "x.json")
    assert_refused(code, err, "--json", "does not exist")
    assert not (tmp_path / "missing").exists()


def test_eval_takes_the_run_directory(weights, capsys):
    code, out, _ = cli(capsys, "eval", "--checkpoint", weights)
    assert code == 0 and "top-1" in out


def test_predict_reports_the_good_images_when_one_is_unreadable(weights, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (16, 16), (90, 10, 10)).save(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    code, out, err = cli(capsys, "predict", "--weights", weights / "model.safetensors", good,
                         bad, "--top", "2")
    assert code == 1 and out.splitlines()[0] == str(good) and len(out.splitlines()) == 3
    assert "bad.png: unreadable image" in err and "Traceback" not in err


def test_analysis_commands_write_a_fresh_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small = ["spp", "--depth", "26", "--image-size", "32", "--batch-size", "2"]
    code, out, _ = cli(capsys, *small)
    assert code == 0 and not (tmp_path / "docs").exists()
    (written,) = (tmp_path / "runs").glob("spp-*/spp_resnet26.png")
    assert str(written.relative_to(tmp_path)) in out
    code, _, err = cli(capsys, *small, "--out-dir", written.parent)
    assert_refused(code, err, "--force")
    assert cli(capsys, *small, "--out-dir", written.parent, "--force")[0] == 0


def test_readable_output(weights, capsys):
    code, out, _ = cli(capsys, "train", "--preset", "debug", "--epochs", "1", "--no-progress",
                       "--out-dir", weights.parent / "again")
    assert code == 0 and "TrainConfig(" not in out
    assert any(line.split()[:2] == ["--model", "nfnet_tiny"] for line in out.splitlines())
    code, out, _ = cli(capsys, "bench", "--model", "nfnet_tiny", "--batch-size", "2",
                       "--repeats", "1")
    assert code == 0 and out.splitlines()[0].split() == ["model", "nfnet_tiny"]
    assert any(line.startswith("train img s ") for line in out.splitlines())
    code, out, _ = cli(capsys, "bench", "--model", "nfnet_tiny", "--batch-size", "2",
                       "--repeats", "1", "--json")
    assert json.loads(out)["model"] == "nfnet_tiny"
    assert "1000-class classifier" in cli(capsys, "list")[1]
    assert cli(capsys, "--version")[1].strip() == f"normfree {normfree.__version__}"
    help_text = " ".join(cli(capsys, "train", "--preset", "debug", "--help")[1].split())
    assert "(debug: nfnet_tiny)" in help_text and "(fmnist:" not in help_text


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"], ["list"]])
def test_commands_that_need_no_torch_do_not_import_it(argv):
    """`--help`, `--version` and `list` answer without importing torch (~2 s of a start)."""
    code = (f"import sys\nfrom normfree.cli import main\ntry:\n    main({argv!r})\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr


def test_resume_without_out_dir_continues_the_latest_run(weights, tmp_path, monkeypatch,
                                                         capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "train", "--preset", "debug", "--resume")
    assert_refused(code, err, "no nfnet_tiny run under runs/")
    shutil.copytree(weights, tmp_path / "runs" / "nfnet_tiny-20260101-000000")
    code, out, _ = cli(capsys, "train", "--preset", "debug", "--resume")
    assert code == 0 and "is finished" in out
    assert "continuing the latest nfnet_tiny run, runs/nfnet_tiny-20260101-000000" in out
    code, _, err = cli(capsys, "train", "--resume", "--out-dir", weights, "--lr", "0.5")
    assert_refused(code, err, "--lr: the run has 0.05, given 0.5")


def image_folder(root, counts, broken=()):
    """root/<split>/<a|b>/<i>.png with counts[split] images a class; (split, class, i) in
    `broken` are not images."""
    for split, count in counts.items():
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                path = root / split / c / f"{i}.png"
                if (split, c, i) in broken or (split, c, "all") in broken:
                    path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
                else:
                    Image.new("RGB", (16, 16), (40 * i, 90 if c == "a" else 200, 10)).save(path)
    return root


FOLDER_RUN = ["--model", "nfnet_tiny", "--image-size", "16", "--epochs", "1", "--workers", "0",
              "--no-compile", "--no-progress", "--dataset", "folder"]


def test_unreadable_validation_images_are_named(tmp_path, capsys):
    data = image_folder(tmp_path / "d", {"train": 6, "val": 2},
                        broken={("val", "a", "all"), ("val", "b", "all")})
    code, _, err = cli(capsys, "train", *FOLDER_RUN, "--data-dir", data,
                       "--out-dir", tmp_path / "run")
    assert_refused(code, err, "no readable validation images")


def test_skipped_training_images_are_one_line_and_counted(tmp_path, capsys):
    data = image_folder(tmp_path / "d", {"train": 6, "val": 2}, broken={("train", "a", 3)})
    code, out, err = cli(capsys, "train", *FOLDER_RUN, "--data-dir", data,
                         "--batch-size", "4", "--out-dir", tmp_path / "run")
    assert code == 0 and "Warning" not in err
    lines = [line for line in out.splitlines() if "unreadable" in line]
    assert lines == [f"  skipped 1 unreadable training image(s) in the last pass, e.g. "
                     f"{data / 'train' / 'a' / '3.png'}"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["skipped_images"] == {"train": 1, "test": 0}


@pytest.mark.parametrize("flags,fragments", [
    (["--batch-size", "32", "--device-batch-size", "12"],
     ["--batch-size 32 (the global batch) must be a multiple of 1 process × "
      "--device-batch-size 12 = 12"]),
    (["--precision", "bf16"], ["--precision bf16: this CPU has no native bf16"]),
    (["--precision", "fp16"], ["--precision fp16: torch", "has no fp16 autocast"]),
    (["--lr", "0.1", "--lr-base", "0.1"], ["give one of --lr", "and --lr-base"])])
def test_scale_and_precision_mistakes_are_refused_before_anything_is_written(
        tmp_path, capsys, monkeypatch, flags, fragments):
    monkeypatch.setattr(normfree.runtime, "cpu_flags", lambda: {"avx2"})  # no bf16 here
    monkeypatch.setattr(normfree.runtime, "fp16_available", lambda device: False)
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--preset", "debug", "--out-dir", out, *flags)
    assert_refused(code, err, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("flags,fragments", [
    (["--randaugment", "4,23"], ["--randaugment 4,23", "reference pipeline", "[0, 22.5)"]),
    (["--pipeline", "torchvision", "--randaugment", "2,31"], ["torchvision", "[0, 31)"]),
    (["--test-size", "128"], ["--test-size 128 is below the training crop --image-size 192"]),
    (["--sam-fraction", "1.5"], ["--sam-fraction must be in (0, 1]"]),
    (["--sam-fraction", "0"], ["--sam-fraction must be in (0, 1]"]),
    (["--pipeline", "deepmind"], ["--pipeline must be one of torchvision, reference"])])
def test_imagenet_recipe_mistakes_are_refused_before_anything_is_written(tmp_path, capsys,
                                                                         flags, fragments):
    data = tmp_path / "data" / "train" / "a"
    data.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(data / "0.jpg")
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--preset", "imagenet-f0", "--data-dir",
                       tmp_path / "data", "--out-dir", out, *flags)
    assert_refused(code, err, *fragments)
    assert not out.exists()
