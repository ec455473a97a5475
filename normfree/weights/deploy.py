"""Inference-only forms of a model: Scaled WS folded into plain convs, and ONNX export."""

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ExportError, MissingDependency
from ..files import atomic_write
from ..nn.network import NFBlock
from ..nn.padding import SameConv2d
from ..nn.ws_conv import WSConv2d


@torch.no_grad()
def fold_ws(model):
    """Make `model` an inference model, in place, and return it (in eval mode).

    Every `WSConv2d` becomes a `SameConv2d` holding its standardised weight Ŵ (gain, γ and β
    included), so no standardisation runs per call, and each NF block without an end-of-block
    SE gate takes α · skip gain into its last conv (`NFBlock.fold_residual_scale_`). Train the
    unfolded model: a folded one has plain weights.
    """
    model.eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WSConv2d):
                conv = SameConv2d(child.in_channels, child.out_channels, child.kernel_size,
                                  stride=child.stride, dilation=child.dilation,
                                  groups=child.groups, bias=True,
                                  padding_rule=child.padding_rule)
                # Ŵ keeps W's memory format (channels_last stays channels_last)
                conv.weight = nn.Parameter(child.standardized_weight().detach().clone(
                    memory_format=torch.preserve_format), requires_grad=False)
                conv.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
                setattr(parent, name, conv)
    for block in model.modules():
        if isinstance(block, NFBlock):
            block.fold_residual_scale_()
    return model


def export_onnx(model, path, image_size, batch_size=1, check=True, opset=18):
    """Fold a copy of `model` and export it to ONNX (dynamic batch, fixed `image_size`).

    TF 'SAME' padding is resolved for `image_size`, so the file is valid at that size only.
    With `check`, onnxruntime runs the file and its logits must match PyTorch's within 1e-4
    (relative to the largest logit); returns that error (None without `check`).
    """
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
        import onnxruntime
    except ImportError:
        raise MissingDependency("ONNX export needs the onnx extra: pip install "
                                "'normfree[onnx]'") from None
    folded = fold_ws(copy.deepcopy(model)).float().cpu()
    images = torch.randn(batch_size, folded.cfg.in_chans, image_size, image_size,
                         generator=torch.Generator().manual_seed(0))

    def write(f):
        # The tracer's notes (fixed sizes and paddings, as documented; constant folding it
        # skips; the legacy exporter's deprecation) are not the user's to act on: the file's
        # output is checked against PyTorch's below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(folded, (images,), f, input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
    atomic_write(path, write)
    if not check:
        return None
    session = onnxruntime.InferenceSession(str(Path(path)), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})
    expected = folded(images)
    error = ((torch.from_numpy(logits) - expected).abs().max() / expected.abs().max()).item()
    if error > 1e-4:
        Path(path).unlink()
        raise ExportError(f"ONNX output differs from PyTorch by {error:.2e} (relative); the "
                          "file was removed")
    return error
