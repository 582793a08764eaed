"""Official implementations' parameter names to bam-dense's, shared by the tests that load recorded weights."""

from __future__ import annotations


def mocov3_mlp_to_mlphead(state: dict) -> dict:
    """moco-v3's Sequential names (Linear at 3i, BatchNorm at 3i+1, last BatchNorm after the last Linear) to
    MLPHead's (linears.i, norms.i, last_norm)."""
    linear_idx = sorted({int(k.split(".")[0]) for k, v in state.items() if k.endswith("weight") and v.dim() == 2})
    out = {}
    for key, value in state.items():
        idx, name = key.split(".", 1)
        idx = int(idx)
        if idx in linear_idx:
            out[f"linears.{linear_idx.index(idx)}.{name}"] = value
        elif idx - 1 in linear_idx and linear_idx.index(idx - 1) < len(linear_idx) - 1:
            out[f"norms.{linear_idx.index(idx - 1)}.{name}"] = value
        else:
            out[f"last_norm.{name}"] = value
    return out


def mocov3_to_ours(state: dict, head: str) -> dict:
    """moco-v3 ``MoCo`` names to ``MoCoV3Net``'s: ``base_encoder.*`` / ``momentum_encoder.*`` -> ``backbone.*``,
    their ``head.*`` (ViT) or ``fc.*`` (ResNet) -> ``projector.*``, ``predictor.*`` -> ``predictor.*``, the
    MLPs' Sequential indices as :func:`mocov3_mlp_to_mlphead`."""
    parts: dict[str, dict] = {"backbone": {}, "projector": {}, "predictor": {}}
    for key, value in state.items():
        encoder, rest = key.split(".", 1)
        if encoder == "predictor":
            parts["predictor"][rest] = value
        elif rest.startswith(head + "."):
            parts["projector"][rest[len(head) + 1:]] = value
        else:
            parts["backbone"][rest] = value
    out = {f"backbone.{k}": v for k, v in parts["backbone"].items()}
    for part in ("projector", "predictor"):
        out.update({f"{part}.{k}": v for k, v in mocov3_mlp_to_mlphead(parts[part]).items()})
    return out
