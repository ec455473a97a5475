"""Signal-propagation plots (ICLR paper §3; docs/architecture.md §12).

Forward hooks record, at the stem output and after every residual block: the average channel
squared mean, mean_c (mean_{N,H,W} x)², the average channel variance, mean_c var_{N,H,W}(x), and
the variance of the residual branch at its measurement point (the block's `residual` module,
before stochastic depth and the skip gain). The model computes the same with or without them.
"""

from contextlib import contextmanager

import torch

from ..figures import save_figure, subplots
from ..files import write_csv
from ..nn.bn_twins import BNBlock
from ..nn.network import BranchOutput, NFBlock
from ..nn.zoo import build_model

CSV_FIELDS = ["model", "depth", "name", "avg_sq_mean", "avg_var", "residual_var"]


def channel_stats(x):
    """(average channel squared mean, average channel variance) of an NCHW tensor."""
    x = x.detach().double()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), correction=0)
    return mean.pow(2).mean().item(), var.mean().item()


@contextmanager
def recording(model):
    """Yield a list that fills with one record per measured point during forward passes."""
    records, handles = [], []
    # the residual branch finishes before its block does, so buffer it per block
    pending = {}

    def on_residual(name):
        def hook(module, inputs, output):
            pending[name] = channel_stats(BranchOutput.value(output))[1]
        return hook

    def on_block(name):
        def hook(module, inputs, output):
            sq_mean, var = channel_stats(output)
            records.append({"name": name, "avg_sq_mean": sq_mean, "avg_var": var,
                            "residual_var": pending.pop(name, None)})
        return hook

    try:
        handles.append(model.stem.register_forward_hook(on_block("stem")))
        for name, module in model.named_modules():
            if isinstance(module, (NFBlock, BNBlock)):
                handles.append(module.residual.register_forward_hook(on_residual(name)))
                handles.append(module.register_forward_hook(on_block(name)))
        yield records
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def signal_stats(model, inputs):
    """Per-depth statistics of one forward pass of `inputs` (a list of dicts, stem first)."""
    with recording(model) as records:
        model(inputs)
    for depth, record in enumerate(records):
        record["depth"] = depth
    return records


def write_curves_csv(curves, path):
    """curves: {label: records}. One row per (label, depth)."""
    write_csv(path, CSV_FIELDS, [{"model": label, **{k: r[k] for k in CSV_FIELDS[1:]}}
                                 for label, records in curves.items() for r in records])


def plot(curves, path, title="Signal propagation at initialisation"):
    """Three panels against depth, one line per model."""
    fig, axes = subplots(1, 3, figsize=(15, 4.2))
    panels = [("avg_sq_mean", "average channel squared mean"),
              ("avg_var", "average channel variance"),
              ("residual_var", "residual-branch variance")]
    for ax, (key, label) in zip(axes, panels):
        for name, records in curves.items():
            points = [(r["depth"], r[key]) for r in records if r[key] is not None]
            ax.plot(*zip(*points), label=name, linewidth=1.2)
        ax.set(xlabel="depth (residual blocks after the stem)", ylabel=label, yscale="log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def paper_models(depth=600):
    """The ICLR paper's four networks at initialisation (Fig. 1/2): {label: model}."""
    nf = f"nf_resnet{depth}"
    bn = f"resnet{depth}_bn"
    return {
        "BN-ReLU-conv (BN ResNet)": build_model(bn, order="bn_act"),
        "ReLU-BN-conv (BN ResNet)": build_model(bn, order="act_bn"),
        "NF-ResNet, He-init convs, no WS": build_model(nf, weight_standardization=False,
                                                       skip_init=False),
        "NF-ResNet, Scaled WS": build_model(nf, skip_init=False),
    }


def paper_comparison(depth=600, image_size=32, batch_size=8, seed=0):
    """Signal statistics of `paper_models(depth)` on one N(0, 1) batch: {label: records}."""
    curves = {}
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's random state kept
        torch.manual_seed(seed)
        inputs = torch.randn(batch_size, 3, image_size, image_size)
        for label, model in paper_models(depth).items():
            model.train()  # BN uses batch statistics, as in the paper's plots at initialisation
            curves[label] = signal_stats(model, inputs)
    return curves
