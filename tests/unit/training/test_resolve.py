"""`resolve_config` is pure: it fills the automatic settings from the device, the model table,
a saved config and already-loaded weights, and reads no file or hub."""

from types import SimpleNamespace

import torch

from normfree.training.config import preset
from normfree.training.model_setup import initial_weights
from normfree.training.resolve import resolve_config
from normfree.training.specs import ModelSpec, spec_from

CPU = torch.device("cpu")


def test_fine_tuning_takes_variant_numerics_and_size_from_the_loaded_weights(tmp_path):
    cfg = preset("finetune", init_from=str(tmp_path / "never-read.safetensors"),
                 data_dir=str(tmp_path), precision="fp32")
    source = SimpleNamespace(name="nfnet_f0", numerics="timm", train_size=160)
    resolved = resolve_config(cfg, CPU, source=source)  # the file does not exist: not read
    assert (resolved.model, resolved.numerics, resolved.image_size) == ("nfnet_f0", "timm", 160)
    assert resolved.test_size == 256 and resolved.channels_last is True  # the variant's own


def test_resuming_keeps_what_the_saved_config_resolved():
    cfg = preset("finetune", model=None, precision="fp32", data_dir="d")
    saved = {"model": "nfnet_f0", "numerics": "deepmind", "image_size": 64, "steps": 7}
    resolved = resolve_config(cfg, CPU, saved=saved)
    assert (resolved.model, resolved.image_size, resolved.steps) == ("nfnet_f0", 64, 7)
    assert resolved.test_size == 64  # evaluation at the training size given


def test_initial_weights_are_read_only_when_asked():
    assert initial_weights(spec_from(ModelSpec, preset("debug")), CPU) is None
