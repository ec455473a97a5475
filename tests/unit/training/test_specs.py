"""The floors' specs partition the flat `TrainConfig`, and the settings' roles come from them."""

import dataclasses
from collections import Counter
from dataclasses import fields, replace

import pytest

from normfree.data.spec import AugmentSpec, DataSpec
from normfree.training.budget import speed_key
from normfree.training.config import TrainConfig, preset
from normfree.training.distributed import Processes
from normfree.training.run_dirs import config_differences
from normfree.training.specs import (CHANGEABLE_ON_RESUME, SPECS, UNTIMED_FIELDS, ExecutionSpec,
                                     StepSpec, field_names, record_fields, spec_from)


def test_every_setting_belongs_to_exactly_one_spec():
    owners = Counter(f.name for spec in SPECS for f in record_fields(spec))
    assert set(owners) == {f.name for f in fields(TrainConfig)}
    assert set(owners.values()) == {1}
    assert len(owners) == 60


def test_a_spec_holds_the_records_values_and_is_frozen():
    cfg = preset("debug", randaugment=(2, 9), mixup_alpha=0.2, workers=3)
    data = spec_from(DataSpec, cfg)
    assert (data.dataset, data.image_size, data.batch_size, data.workers) == ("synthetic", 16,
                                                                              32, 3)
    assert data.augmentation == AugmentSpec("torchvision", 0, True, (2, 9), 0.0, 0.2, 0.0)
    step = spec_from(StepSpec, cfg)
    assert (step.lr, step.precision, step.ema_decay) == (0.05, "fp32", 0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.lr = 1.0


def test_a_resumed_run_may_change_how_it_executes_not_what_it_computes():
    assert CHANGEABLE_ON_RESUME == field_names(ExecutionSpec) | {"precision", "workers"}
    assert len(CHANGEABLE_ON_RESUME) == 13
    saved = preset("debug")
    executes = replace(saved, threads=2, compile=True, precision="bf16", workers=1,
                       checkpoint_every=5, device_batch_size=8)
    assert config_differences(executes, saved) == []
    differ = config_differences(replace(saved, lr=0.1, crop_padding=2), saved)
    assert [d.split(":")[0] for d in differ] == ["--crop-padding", "--lr"]


def test_speed_records_ignore_the_untimed_settings_only():
    assert UNTIMED_FIELDS == {"seed", "out_dir", "resume", "time_budget", "epochs", "steps",
                              "progress", "tensorboard", "checkpoint_every", "lr", "lr_base",
                              "momentum", "weight_decay", "warmup_epochs", "label_smoothing",
                              "small_image_until"}
    procs = Processes()
    base = preset("debug")
    key = speed_key(base, procs)
    assert speed_key(replace(base, seed=7, lr=0.3, epochs=9, out_dir="x"), procs) == key
    for timed in (dict(batch_size=64), dict(precision="bf16"), dict(eval_every=2)):
        assert speed_key(replace(base, **timed), procs) != key
