"""Optimizers (AdamW, SGD, LARS) with parameter groups chosen by parameter *type*.

Biases, normalisation-layer parameters (any BatchNorm/LayerNorm/GroupNorm) and other 1-D parameters
get no weight decay and, under LARS, no trust-ratio adaptation. The groups never depend on parameter
names, so renaming a module cannot silently change the recipe (the LEWEL defect L4). ``decay_1d`` puts every
parameter in one decayed group instead (MoCo v3's AdamW over ``model.parameters()``).

Two LARS rules, each its source's update exactly (hand-written because the differences are the point):
:class:`LARS` (LayneH/LEWEL ``utils/LARS.py``) and :class:`MoCoLARS` (facebookresearch/moco-v3
``moco/optimizer.py``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bam_dense.core.errors import UserFacingError

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


def _evaluate(closure) -> torch.Tensor | None:
    """The loss of an optimizer's optional ``closure`` (re-evaluated with gradients on)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


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
        loss = _evaluate(closure)
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


class MoCoLARS(torch.optim.Optimizer):
    """LARS with the update rule of MoCo v3's ``moco/optimizer.py``.

    For a parameter of more than one dimension: ``d = g + wd * w``, ``trust = eta * ||w|| / ||d||`` (1 when a
    norm is 0), ``d <- d * trust``; a parameter of ``ndim <= 1`` (biases, norm scales and shifts) takes
    ``d = g``: neither decayed nor adapted, whatever its group. Then ``mu <- momentum * mu + d`` and
    ``w <- w - lr * mu``: unlike :class:`LARS` the buffer holds no learning rate, so during the warm-up the
    momentum carries past gradients at the current rate.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(d)
                p.add_(state["mu"], alpha=-group["lr"])
        return loss


LARS_RULES = {"lewel": LARS, "moco": MoCoLARS}


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, betas=(0.9, 0.999),
                    momentum: float = 0.9, lars_eta: float = 0.001, fused: bool = False, lars_rule: str = "lewel",
                    decay_1d: bool = False) -> torch.optim.Optimizer:
    """Two groups: ``decay`` (``wd_scale`` 1) and ``no_decay`` (``wd_scale`` 0, no LARS adaptation); one group
    of every trainable parameter (``wd_scale`` 1) with ``decay_1d`` (AdamW, SGD) or LARS's ``moco`` rule (which
    leaves 1-d parameters alone by itself, as MoCo v3 gives it ``model.parameters()``).

    The engine sets ``group['weight_decay'] = wd * group['wd_scale']`` every step from its schedule.
    ``fused`` selects AdamW's fused kernel (same update, one kernel launch for all parameters).
    """
    if lars_rule not in LARS_RULES:
        raise ValueError(f"unknown LARS rule {lars_rule!r}; choose from {', '.join(LARS_RULES)}")
    if decay_1d and name == "lars":
        raise UserFacingError("optim.decay_1d applies to adamw and sgd; LARS leaves 1-d parameters undecayed by its rule")
    decay, no_decay = param_groups(model)
    if decay_1d or (name == "lars" and lars_rule == "moco"):
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "wd_scale": 1.0,
                   "weight_decay": weight_decay, "lars_adapt": True}]
    else:
        groups = [
            {"params": decay, "wd_scale": 1.0, "weight_decay": weight_decay, "lars_adapt": True},
            {"params": no_decay, "wd_scale": 0.0, "weight_decay": 0.0, "lars_adapt": False},
        ]
    if name == "adamw":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "lars_adapt"} for g in groups], lr=lr, betas=tuple(betas),
                                 fused=fused)
    if name == "sgd":
        return torch.optim.SGD([{k: v for k, v in g.items() if k != "lars_adapt"} for g in groups], lr=lr, momentum=momentum)
    if name == "lars" and lars_rule == "moco":
        return MoCoLARS([{k: v for k, v in g.items() if k != "lars_adapt"} for g in groups], lr=lr, momentum=momentum,
                        weight_decay=weight_decay, eta=lars_eta)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    raise ValueError(f"unknown optimizer {name!r}")
