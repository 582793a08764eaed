"""Optimizers (AdamW, SGD, LARS) with parameter groups chosen by parameter *type*.

Biases, normalisation-layer parameters (any BatchNorm/LayerNorm/GroupNorm) and other 1-D parameters
get no weight decay and, under LARS, no trust-ratio adaptation. The groups never depend on parameter
names, so renaming a module cannot silently change the recipe (the LEWEL defect L4).
"""

from __future__ import annotations

import torch
import torch.nn as nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, NORM_TYPES):
        return True
    # timm's norms subclass these or are named *Norm* (LayerNorm2d, RmsNorm, ...)
    return type(module).__name__.lower().endswith(("norm", "norm2d", "normnobias", "norm2dnobias"))


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): trainable parameters split by type. Each parameter appears once."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        norm = _is_norm(module)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if norm or name == "bias" or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    return decay, no_decay


class LARS(torch.optim.Optimizer):
    """Momentum SGD with layer-wise trust ratios (You et al.), with the update rule of LEWEL's LARS.

    For groups with ``lars_adapt``: ``trust = eta * ||w|| / (||g|| + wd * ||w||)`` (1 when a norm is 0),
    ``u = (g + wd * w) * trust * lr``; other groups use ``u = (g + wd * w) * lr``. Then
    ``buf <- momentum * buf + u`` and ``w <- w - buf`` (the learning rate lives inside the buffer).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, mom, lr = group["weight_decay"], group["eta"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                scale = torch.tensor(lr, device=p.device, dtype=p.dtype)
                if group["lars_adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / (g_norm + wd * w_norm), torch.ones_like(w_norm))
                    scale = scale * trust
                update = (grad.add(p, alpha=wd) if wd else grad) * scale
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(mom).add_(update)
                p.sub_(state["momentum_buffer"])
        return loss


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, betas=(0.9, 0.999),
                    momentum: float = 0.9, lars_eta: float = 0.001, fused: bool = False) -> torch.optim.Optimizer:
    """Two groups: ``decay`` (``wd_scale`` 1) and ``no_decay`` (``wd_scale`` 0, no LARS adaptation).

    The engine sets ``group['weight_decay'] = wd * group['wd_scale']`` every step from its schedule.
    ``fused`` selects AdamW's fused kernel (same update, one kernel launch for all parameters).
    """
    decay, no_decay = param_groups(model)
    groups = [
        {"params": decay, "wd_scale": 1.0, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": no_decay, "wd_scale": 0.0, "weight_decay": 0.0, "lars_adapt": False},
    ]
    if name == "adamw":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "lars_adapt"} for g in groups], lr=lr, betas=tuple(betas),
                                 fused=fused)
    if name == "sgd":
        return torch.optim.SGD([{k: v for k, v in g.items() if k != "lars_adapt"} for g in groups], lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    raise ValueError(f"unknown optimizer {name!r}")
