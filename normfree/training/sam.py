"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) as the NFNet paper uses it (F6 on
ImageNet, and fine-tuning after JFT pre-training; docs/architecture.md §11).

One SAM update at weights w, with ρ the radius:

    g_a = ∇ L_A(w)             A: the first `fraction` of this process's batch (the paper: 20 %)
    ε   = ρ · g_a / ‖g_a‖₂     ‖·‖ over all trained parameters together
    g   = ∇ L_B(w + ε)         B: the whole global batch (micro-batches, all-reduced under DDP)
    w  ← optimizer step from w with g, after AGC has clipped g

As in the paper, the ascent gradient is not synchronised across processes: each takes its own
ε from its own images. AGC clips the descent gradient g relative to the unperturbed weights w
(the weights the update is applied to), which is where the paper clips: after the ascent, on the
gradient the optimizer uses. Differences from the reference: it has no SAM code; this follows
the paper's description.
"""

import torch

from ..errors import ConfigError


class SAM:
    """Perturbs the weights to the ascent point before the descent gradient is taken, and puts
    them back before the update. `rho` > 0; `fraction` of each process's batch in (0, 1]."""

    def __init__(self, rho=0.05, fraction=0.2):
        if not rho > 0:
            raise ConfigError(f"--sam-rho must be positive, got {rho}")
        if not 0 < fraction <= 1:
            raise ConfigError(f"--sam-fraction must be in (0, 1], got {fraction}")
        self.rho, self.fraction = rho, fraction
        self._moved = None  # (parameters, their values) while at the ascent point

    def ascent_size(self, count):
        """Images of a batch of `count` the ascent step uses (at least one)."""
        return max(1, round(self.fraction * count))

    @torch.no_grad()
    def ascend(self, parameters):
        """Move `parameters` by ε along their `.grad` (the ascent gradient, at any loss scale:
        ε depends on its direction only), which is then cleared. Returns ‖g_a‖; a non-finite
        or zero gradient moves nothing."""
        params = [p for p in parameters if p.grad is not None]
        grads = [p.grad for p in params]
        norm = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if params
                else torch.tensor(0.0))
        if params and torch.isfinite(norm) and norm > 0:
            # a copy to restore from: w + ε − ε need not give w back in floating point
            self._moved = (params, [p.clone() for p in params])
            torch._foreach_add_(params, torch._foreach_mul(grads, (self.rho / norm).item()))
        for p in params:
            p.grad = None
        return norm

    @torch.no_grad()
    def restore(self):
        """Put the weights back where the ascent found them."""
        if self._moved is not None:
            params, saved = self._moved
            torch._foreach_copy_(params, saved)
            self._moved = None
