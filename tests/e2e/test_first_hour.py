"""A new user's first hour, typed as a user would, each command in its own process: every
step exits 0 with no traceback and no Python warning text on stderr."""

import json
import os
import signal
import subprocess
import sys

from PIL import Image

from normfree.training.checkpoints import load_checkpoint

from helpers import wait_for_checkpoint


def normfree(*args, cwd, check=True):
    result = subprocess.run([sys.executable, "-m", "normfree", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    return result


def write_folder(root, classes, per_class, size=20):
    for c, colour in zip(classes, [(200, 30, 30), (30, 30, 200), (30, 200, 30)]):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), tuple(min(255, v + 7 * i) for v in colour)).save(
                root / c / f"{i}.png")


def test_first_hour(tmp_path):
    assert "nfnet_f0" in normfree("list", cwd=tmp_path).stdout
    run = tmp_path / "runs" / "first"
    debug = ["--preset", "debug", "--epochs", "3", "--synthetic-size", "1280", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "normfree", "train", *debug,
                                "--checkpoint-every", "1", "--out-dir", str(run)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(process, run / "checkpoint.pt", 40)  # inside epoch 2
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    stopped = load_checkpoint(run / "checkpoint.pt")

    # --resume --out-dir RUN alone continues with the run's own settings
    resumed = normfree("train", "--resume", "--out-dir", run, cwd=tmp_path).stdout
    assert (f"resuming {run} from step {stopped['step']} (epoch {stopped['epoch'] + 1} of 3)"
            in resumed)
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes(run).values()) == {0o666 & ~umask}  # one rule, also after a resume
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 108 and results["train_seconds"] >= stopped["train_seconds"]
    # again: finished, nothing changes
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    again = normfree("train", "--resume", "--out-dir", run, cwd=tmp_path).stdout
    assert f"{run} is finished (3 epochs" in again and "nothing to do" in again
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before

    # fine-tune the run's weights on a folder of 8 images a class (fewer than a batch); four
    # epochs (one step each) learn the two colours (two epochs called both images "circle")
    write_folder(tmp_path / "shapes" / "train", ["circle", "square"], 8)
    tuned = tmp_path / "runs" / "tuned"
    out = normfree("train", "--preset", "finetune", "--init-from", run / "model.safetensors",
                   "--data-dir", tmp_path / "shapes", "--image-size", "16", "--val-size", "4",
                   "--epochs", "4", "--workers", "0", "--no-progress", "--out-dir", tuned,
                   cwd=tmp_path).stdout
    assert "--batch-size 32 is more than the 12 training images: using batches of 12" in out
    circle, square = (tmp_path / "shapes" / "train" / name / "0.png" for name in
                      ("circle", "square"))
    predicted = normfree("predict", "--weights", tuned / "model.safetensors", circle, square,
                         cwd=tmp_path).stdout
    assert most_likely(predicted) == {str(circle): "circle", str(square): "square"}
    exported = normfree("export", "--weights", tuned / "model.safetensors", "--onnx",
                        tmp_path / "tuned.onnx", cwd=tmp_path).stdout
    assert "wrote" in exported and (tmp_path / "tuned.onnx").is_file()


def most_likely(predicted):
    """{image: its most likely class} from `normfree predict`'s output: each image's path, then
    its classes indented, most likely first."""
    tops, image = {}, None
    for line in predicted.splitlines():
        if not line.startswith(" "):
            image = line
        elif image not in tops:
            tops[image] = line.split()[-1]
    return tops


def modes(run):
    return {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.is_file()}


def test_run_files_follow_the_umask(tmp_path):
    """Every artefact gets the user's umask, as files of other tools do (was 0600 for some)."""
    run = tmp_path / "run"
    subprocess.run(["bash", "-c", f"umask 027 && {sys.executable} -m normfree train --preset "
                    f"debug --epochs 1 --no-progress --out-dir {run}"], check=True,
                   capture_output=True)
    assert set(modes(run).values()) == {0o640}, modes(run)
