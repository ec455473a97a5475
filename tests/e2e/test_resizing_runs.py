"""Progressive resizing in a run: the switch from small to full-size steps where the schedule
says, and bad --small-image-* flags refused on the command line."""

import importlib

import pytest

from normfree.training.config import preset
from normfree.training.loop import train

from helpers import assert_refused, cli


def test_a_run_trains_small_then_full_size_from_the_step_the_schedule_says(tmp_path,
                                                                          monkeypatch):
    """debug: 16 px, 12 steps an epoch, 2 epochs, warm-up 6 steps; until 0.5: the cosine
    reaches 0.5 at step 6 + 0.5 · 18 = 15, so steps 1–15 see 8 px and 16–24 see 16 px."""
    loop = importlib.import_module("normfree.training.loop")
    real_step, sizes = loop.train_step, []

    def recording_step(model, optimizer, images, labels, prepare, **step):
        def recorded(chunk):  # the batch as the model sees it
            chunk = prepare(chunk)
            sizes.append(chunk.shape[-1])
            return chunk
        return real_step(model, optimizer, images, labels, prepare=recorded, **step)
    monkeypatch.setattr(loop, "train_step", recording_step)
    result = train(preset("debug", small_image_scale=0.5, small_image_until=0.5, progress=False,
                          out_dir=str(tmp_path)))
    assert sizes == [8] * 15 + [16] * 9 and result["steps"] == 24


@pytest.mark.parametrize("flags,named", [
    (["--small-image-scale", "1"], "--small-image-scale must be in (0, 1)"),
    (["--small-image-scale", "0"], "--small-image-scale must be in (0, 1)"),
    (["--small-image-scale", "0.5", "--small-image-until", "0"], "--small-image-until must be in"),
    (["--small-image-scale", "0.5", "--small-image-until", "1.5"],
     "--small-image-until must be in")])
def test_bad_small_image_settings_are_refused(flags, named, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--preset", "debug", *flags, "--out-dir", tmp_path / "r")
    assert_refused(code, err, named)
    assert not (tmp_path / "r").exists()
