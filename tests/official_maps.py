"""Official implementations' parameter names to bam-dense's, and the loading, stepping and comparison of recorded
training states, shared by the tests that load recorded weights."""

from __future__ import annotations

import torch


def start_from(trainer, student: dict, teacher: dict, step: int, adam: dict | None = None, to_ours=None) -> None:
    """Put a recorded official state (names already mapped) into an engine ``Trainer``: student, teacher, the
    global step (the epoch follows from it) and, if given, AdamW moments under official names, mapped by
    ``to_ours`` through their ``exp_avg`` tensors (the name maps read the weights' shapes)."""
    ours = set(trainer.student.state_dict())
    assert ours == set(student), f"unmapped keys: {sorted(ours ^ set(student))}"
    trainer.student.load_state_dict(student)
    trainer.teacher.load_state_dict(teacher)
    if adam:
        params = dict(trainer.student.named_parameters())
        official_name = {id(state["exp_avg"]): name for name, state in adam.items()}
        for name, exp_avg in to_ours({n: state["exp_avg"] for n, state in adam.items()}).items():
            trainer.optimizer.state[params[name]] = {k: v.clone() for k, v in adam[official_name[id(exp_avg)]].items()}
    trainer.step = step


def engine_steps(trainer, batches: list[list[torch.Tensor]]) -> list[dict]:
    """One ``train_step`` per batch from the trainer's step on; after each: its terms, the student, its gradients
    and the teacher."""
    results = []
    for batch in batches:
        trainer.epoch = trainer.step // trainer.steps_per_epoch
        terms, _, finite = trainer.train_step([c.clone() for c in batch])
        assert finite
        results.append({"terms": terms, "student": {k: v.clone() for k, v in trainer.student.state_dict().items()},
                        "grads": {n: p.grad.clone() for n, p in trainer.student.named_parameters() if p.grad is not None},
                        "teacher": {k: v.clone() for k, v in trainer.teacher.state_dict().items()}})
        trainer.step += 1
    return results


def assert_states_close(ours: dict, expected: dict, what: str, atol: float, grad_rtol: float | None = None) -> None:
    """The same keys, each tensor within ``atol`` (integers equal); with ``grad_rtol`` (gradients) within
    ``grad_rtol`` of the tensor's largest entry or ``atol``, whichever is larger: a gradient that is zero in
    exact arithmetic, or a small one summed over many terms, keeps float noise of its own."""
    assert set(ours) == set(expected), f"{what}: {sorted(set(ours) ^ set(expected))}"
    for key, value in expected.items():
        if not value.is_floating_point():
            assert torch.equal(ours[key], value), f"{what} {key}"
            continue
        tol = max(grad_rtol * value.abs().max().item(), atol) if grad_rtol is not None else atol
        torch.testing.assert_close(ours[key], value, atol=tol, rtol=0, msg=lambda m, k=key: f"{what} {k}: {m}")


def assert_same_init(ours: dict, theirs: dict) -> None:
    """Two independently seeded initialisations of one architecture agree: the same keys, the same constant
    tensors (BatchNorm ones and zeros, zero-initialised scales) exactly, the random ones of the same scale (a
    factor 2 either way: a tensor of 16 entries estimates its std to 20 %; a wrong init is off by 10 or more)."""
    assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))
    for key, value in theirs.items():
        if not value.is_floating_point():
            continue
        constant = bool((value == value.flatten()[0]).all())
        assert constant == bool((ours[key] == ours[key].flatten()[0]).all()), key
        if constant:
            assert torch.equal(ours[key], value), key
        else:
            ratio = ours[key].std().item() / value.std().item()
            assert 0.5 < ratio < 2, f"{key}: std {ours[key].std().item():.4g} against {value.std().item():.4g}"


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


def lewel_to_ours(state: dict) -> dict:
    """LayneH/LEWEL ``LEWELB_EMAN`` names to ``LEWELNet``'s: ``online_net.`` / ``target_net.`` dropped
    (``backbone.*``, ``neck.proj*``), the MLP1D's 1x1 convolutions (``mlp.0``, ``mlp.3``; weights squeezed to
    linear ones) and BatchNorm (``mlp.1``) to ``MLPHead``'s as :func:`mocov3_mlp_to_mlphead`."""
    out, mlps = {}, {}
    for key, value in state.items():
        key = key.split(".", 1)[1] if key.startswith(("online_net.", "target_net.")) else key
        if ".mlp." in key or key.startswith(("predictor.mlp.", "predictor_obj.mlp.")):
            head, rest = key.split(".mlp.", 1)
            mlps.setdefault(head, {})[rest] = value.squeeze(-1) if value.dim() == 3 else value
        else:
            out[key] = value
    for head, state_ in mlps.items():
        out.update({f"{head}.{k}": v for k, v in mocov3_mlp_to_mlphead(state_).items()})
    return out


def bam_to_ours(state: dict) -> dict:
    """DanielShalam/BAM ``MultiCropWrapper`` names to ``BAMNet``'s: ``backbone.*`` as is, the projector
    ``proj_head.projector.*`` (a Sequential of Linear and GELU) to ``projector.*`` as :func:`mocov3_mlp_to_mlphead`."""
    head = {k[len("proj_head.projector."):]: v for k, v in state.items() if k.startswith("proj_head.projector.")}
    out = {k: v for k, v in state.items() if not k.startswith("proj_head.")}
    out.update({f"projector.{k}": v for k, v in mocov3_mlp_to_mlphead(head).items()})
    return out
