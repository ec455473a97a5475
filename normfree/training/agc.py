"""Adaptive Gradient Clipping (ICML paper §4.1; docs/architecture.md §8) and parameter groups.

For each unit i (a conv output channel, a linear output row; the whole tensor for scalars and
vectors) with weight W_i and gradient G_i:

    G_i ← G_i · λ · max(‖W_i‖, ε) / max(‖G_i‖, 1e-6)   where ‖G_i‖ / max(‖W_i‖, ε) > λ

Differences from the reference: none in the maths. The reference applies AGC inside its optimizer;
here it is a function on `.grad`, like `torch.nn.utils.clip_grad_norm_`, so it works with any
optimizer, after `GradScaler.unscale_`, after DDP's all-reduce and on accumulated gradients.
"""

import torch

from ..errors import ConfigError


def _unit_norms(tensors):
    """Norms of every output unit of every tensor, concatenated into one flat vector; `tensors`
    has its scalars and vectors (one unit each, one `_foreach_norm` call for all) first.
    Reducing over dims 1.. instead of `flatten(1)` avoids copying channels_last weights."""
    vectors = [t for t in tensors if t.ndim <= 1]
    norms = [torch.stack(torch._foreach_norm(vectors))] if vectors else []
    norms += [torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)))
              for t in tensors[len(vectors):]]
    return torch.cat(norms)


@torch.no_grad()
def adaptive_clip_grad_(parameters, clip_factor=0.01, eps=1e-3):
    """Clip gradients in place, unit-wise, relative to the parameter norms.

    All units of all tensors are handled as one flat vector (a few kernels, no per-unit loop).
    Returns the fraction of units that were clipped, as a 0-d tensor (a health signal).
    """
    if clip_factor <= 0:
        raise ConfigError(f"clip_factor must be positive, got {clip_factor}")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    # scalars and vectors first (see _unit_norms); the order of units does not matter
    params = sorted((p for p in parameters if p.grad is not None), key=lambda p: p.ndim > 1)
    if not params:
        return torch.tensor(0.0)
    grads = [p.grad for p in params]
    param_norms = _unit_norms(params).clamp_min_(eps)
    grad_norms = _unit_norms(grads)
    clip = grad_norms / param_norms > clip_factor
    scales = torch.where(clip, param_norms * clip_factor / grad_norms.clamp_min(1e-6), 1.0)
    sizes = [1 if g.ndim <= 1 else g.shape[0] for g in grads]
    # Rewrite only the tensors with a clipped unit (usually few): one host sync saves a read
    # and a write of every other gradient.
    ends = torch.tensor(sizes, device=clip.device).cumsum(0) - 1
    clipped_so_far = clip.cumsum(0)[ends]
    touched = torch.diff(clipped_so_far, prepend=clipped_so_far.new_zeros(1)).gt(0).tolist()
    pairs = [(g, s.view((-1,) + (1,) * (g.ndim - 1)) if g.ndim > 1 else s.view(()))
             for g, s, hit in zip(grads, scales.split(sizes), touched) if hit]
    if pairs:
        torch._foreach_mul_(*map(list, zip(*pairs)))
    return clip.float().mean()


def classifier_name(model):
    """Module path of the classifier: `head.fc` for normfree models, else the last Linear."""
    modules = dict(model.named_modules())
    for name in ("head.fc", "fc", "classifier", "head"):
        if isinstance(modules.get(name), torch.nn.Linear):
            return name
    raise ConfigError(f"{type(model).__name__} has no identifiable classifier: expected a Linear "
                     "module named 'head.fc', 'fc', 'classifier' or 'head'")


def param_groups(model, weight_decay, clip_factor=0.01, eps=1e-3):
    """Three optimizer groups (docs/architecture.md §8), each with its own `weight_decay` and
    `clip_factor` (AGC's λ; `eps`, its ε, goes with it):

    - weights (conv kernels, SE linear weights): decay and AGC;
    - gains, biases, skip gains (and BN affine parameters): AGC, no decay;
    - the classifier weight, chosen by module name: decay, no AGC (`clip_factor=None`).
    """
    classifier_weight = classifier_name(model) + ".weight"
    weights, others, head = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name == classifier_weight:
            head.append(p)
        elif p.ndim > 1:
            weights.append(p)
        else:
            others.append(p)
    clipping = dict(clip_factor=clip_factor, agc_eps=eps)
    groups = [dict(params=weights, weight_decay=weight_decay, **clipping),
              dict(params=others, weight_decay=0.0, **clipping),
              dict(params=head, weight_decay=weight_decay, clip_factor=None)]
    return [g for g in groups if g["params"]]


def clip_param_groups_(optimizer):
    """AGC on every optimizer group that has a `clip_factor` (with the group's `agc_eps`);
    returns the clipped-unit fraction, or None when no group clips."""
    clipped, units = torch.tensor(0.0), 0
    groups = [g for g in optimizer.param_groups if g.get("clip_factor")]
    for group in groups:
        params = [p for p in group["params"] if p.grad is not None]
        n = sum(1 if p.ndim <= 1 else p.shape[0] for p in params)
        clipped = clipped + adaptive_clip_grad_(params, group["clip_factor"],
                                                group["agc_eps"]) * n
        units += n
    return clipped / max(units, 1) if groups else None
