"""The run's model: built for its data from the `ModelSpec`, initialised from weights when
fine-tuning, partly frozen, in its memory format, compiled."""

import shutil
import warnings

import torch

from ..errors import CheckpointError, ConfigError
from ..nn.zoo import build_model
from ..weights.pretrained import load_pretrained


def model_for(spec, data):
    """The run's model: a `ModelSpec`'s variant sized for the data, with its regularisation."""
    overrides = {k: getattr(spec, k) for k in ("dropout", "stochastic_depth", "skip_init")
                 if getattr(spec, k) is not None}
    return build_model(spec.model, len(data.classes), numerics=spec.numerics or "deepmind",
                        in_chans=data.in_chans, **overrides)


def initial_weights(spec, device):
    """The weights a `ModelSpec` fine-tunes from (`init_from`: a file or hub id, read here),
    or None; `resolve_config` takes the variant and sizes from them."""
    return load_pretrained(spec.init_from, spec.model, device) if spec.init_from else None


def initialise_from(model, source, classes):
    """Copy `source`'s weights into `model`; keep its classifier only for the same classes."""
    state = source.model.state_dict()
    if tuple(source.classes) != tuple(classes):
        state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    mine = model.state_dict()
    misfit = [k for k in mine if k in state and state[k].shape != mine[k].shape]
    if misfit or set(state) - set(mine):
        raise CheckpointError(f"--init-from {source.name} weights do not fit the run's model "
                              f"(mis-shaped: {misfit[:4]}; is --in-chans or --model different?)")
    model.load_state_dict(state, strict=False)


def freeze(model, names):
    """`requires_grad_(False)` on the comma-separated modules `names` (e.g. "stem,stages.0")."""
    for name in filter(None, (n.strip() for n in (names or "").split(","))):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            top = [n for n, _ in model.named_children()]
            raise ConfigError(f"--freeze: the model has no module {name!r}; its top-level "
                             f"modules are {top} (stages are stages.0, stages.1, ...)") from None
        module.requires_grad_(False)


def compiled(model, cfg, device):
    """`torch.compile(model)` when `cfg.compile` asks and the backend can run here."""
    if not cfg.compile:
        return model
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        warnings.warn("--compile: no C++ compiler on PATH (inductor needs one on CPU); "
                      "training without torch.compile", stacklevel=2)
        return model
    # a static graph for each batch size (progressive resizing has two), like the one the
    # step was measured with, rather than the any-size graph a second size makes by default
    return torch.compile(model, dynamic=False)


def memory_format(cfg):
    """The memory format the run's model, batches and evaluation use."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format
