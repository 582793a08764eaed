"""The pretraining engine: config, schedules, optimizers, data robustness, checkpoints, resume, signals."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import PYTHON, REPO, tiny_pretrain_dict
from PIL import Image

from bam_dense.core.config import ConfigError, load_config
from bam_dense.core.paths import bundled
from bam_dense.engine.optim import LARS, build_optimizer, param_groups
from bam_dense.engine.schedules import cosine, peak_lr, warmup_cosine
from bam_dense.engine.teacher import EMATeacher, make_teacher
from bam_dense.engine.trainer import NonFiniteLoss, Trainer


# ---------------------------------------------------------------------------- config
def test_misspelt_key_names_its_path_and_the_closest_valid_key(tmp_path):
    cfg = tiny_pretrain_dict(tmp_path)
    cfg["optim"]["weight_decya"] = 0.1
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.weight_decya'; did you mean 'optim.weight_decay'\?"):
        load_config(data=cfg)


def test_misspelt_nested_method_key_and_method_name(tmp_path):
    cfg = tiny_pretrain_dict(tmp_path)
    cfg["method"]["projector"]["hiden_dim"] = 8
    with pytest.raises(ConfigError, match=r"'method.projector.hiden_dim'; did you mean 'method.projector.hidden_dim'"):
        load_config(data=cfg)
    cfg = tiny_pretrain_dict(tmp_path)
    cfg["method"]["name"] = "bma"
    with pytest.raises(ConfigError, match=r"unknown method 'bma'; did you mean 'bam'"):
        load_config(data=cfg)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_pretrain_dict(tmp_path)))
    cfg = load_config(path, ["optim.lr=0.5", "method.top_k=0", "model.kwargs.depth=1", "data.views.global_scale=[0.3, 1.0]"])
    assert cfg.optim.lr == 0.5 and cfg.method.top_k == 0 and cfg.model.kwargs["depth"] == 1
    assert cfg.data.views.global_scale == [0.3, 1.0]
    with pytest.raises(ConfigError, match=r"optim.lr: expected a number, got 'fast'"):
        load_config(path, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"optim.amp: 'fp8' is not one of none, bf16, fp16"):
        load_config(path, ["optim.amp=fp8"])


def test_every_shipped_pretraining_config_validates():
    for path in sorted(bundled("configs/pretrain", required=True).glob("*.yaml")):
        load_config(path)


# ---------------------------------------------------------------------------- schedules and optimizers
def test_schedules_at_their_boundaries():
    assert warmup_cosine(0, 100, 10, peak=1.0, final=0.1) == 0.0
    assert warmup_cosine(5, 100, 10, peak=1.0, final=0.1) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 10, peak=1.0, final=0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, peak=1.0, final=0.1) == pytest.approx(0.55)  # cosine midpoint
    assert warmup_cosine(100, 100, 10, peak=1.0, final=0.1) == pytest.approx(0.1)
    assert warmup_cosine(150, 100, 10, peak=1.0, final=0.1) == pytest.approx(0.1)
    assert cosine(0, 10, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine(10, 10, 0.996, 1.0) == 1.0
    assert peak_lr(3e-4, 4096, 256) == pytest.approx(4.8e-3)
    assert peak_lr(7.2, 4096, None) == 7.2


def test_biases_and_norm_parameters_are_excluded_from_weight_decay_by_type():
    from bam_dense.models.backbones import create_backbone

    vit = create_backbone("vit_small_patch16_224", {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
                          freeze_patch_embed=True)
    decay, no_decay = param_groups(vit)
    names = {id(p): n for n, p in vit.named_parameters()}
    decay_names = {names[id(p)] for p in decay}
    no_decay_names = {names[id(p)] for p in no_decay}
    assert "blocks.0.attn.qkv.weight" in decay_names and "cls_token" in decay_names
    assert {"blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.bias", "norm.weight"} <= no_decay_names
    assert "pos_embed" not in decay_names | no_decay_names  # frozen sin-cos table
    assert "patch_embed.proj.weight" not in decay_names | no_decay_names  # frozen (MoCo v3)


def test_lars_trust_ratio_and_exclusions_match_a_hand_computation():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "lars_adapt": True, "weight_decay": 0.1},
                {"params": [b], "lars_adapt": False, "weight_decay": 0.0}], lr=0.5, momentum=0.9, eta=0.001)
    w.grad = torch.tensor([0.6, 0.8])  # |g| = 1
    b.grad = torch.tensor([2.0])
    opt.step()
    trust = 0.001 * 5 / (1 + 0.1 * 5)
    expected_w = torch.tensor([3.0, 4.0]) - (torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0])) * trust * 0.5
    torch.testing.assert_close(w.detach(), expected_w)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 2.0 * 0.5]))
    w.grad = torch.tensor([0.6, 0.8])
    before = w.detach().clone()
    buf = (torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0])) * trust * 0.5
    opt.step()  # momentum buffer: 0.9 * buf + new update
    wn, gn = before.norm(), torch.tensor([0.6, 0.8]).norm()
    new = (torch.tensor([0.6, 0.8]) + 0.1 * before) * (0.001 * wn / (gn + 0.1 * wn)) * 0.5
    torch.testing.assert_close(w.detach(), before - (0.9 * buf + new))


def test_optimizer_groups_carry_weight_decay_scales():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    for name in ("adamw", "sgd", "lars"):
        opt = build_optimizer(model, name, lr=0.1, weight_decay=0.05)
        assert [g["wd_scale"] for g in opt.param_groups] == [1.0, 0.0]
        assert len(opt.param_groups[0]["params"]) == 1 and len(opt.param_groups[1]["params"]) == 3


# ---------------------------------------------------------------------------- EMA teacher
def test_ema_params_only_versus_eman_buffers_and_modes():
    for buffers, eval_mode in (("params", False), ("params_and_buffers", True)):
        student = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
        teacher = make_teacher(student)
        ema = EMATeacher(student, teacher, momentum=0.9, momentum_end=1.0, total_steps=10, buffers=buffers, eval_mode=eval_mode)
        assert teacher.training is (not eval_mode)
        assert all(not p.requires_grad for p in teacher.parameters())
        with torch.no_grad():
            student[0].weight.add_(1.0)
            student[1].running_mean.fill_(2.0)
            student[1].num_batches_tracked.fill_(7)
        t_weight = teacher[0].weight.clone()
        m = ema.update(step=0)
        assert m == pytest.approx(0.9)
        torch.testing.assert_close(teacher[0].weight, 0.9 * t_weight + 0.1 * student[0].weight)
        if buffers == "params":
            assert torch.equal(teacher[1].running_mean, torch.zeros(3)) and teacher[1].num_batches_tracked.item() == 0
        else:
            torch.testing.assert_close(teacher[1].running_mean, torch.full((3,), 0.2))
            assert teacher[1].num_batches_tracked.item() == 7
    assert ema.momentum_at(5) == pytest.approx(0.95)  # cosine midpoint between 0.9 and 1.0


# ---------------------------------------------------------------------------- data robustness
def _write_odd_images(root: Path) -> dict[str, str]:
    cls = root / "train" / "n0"
    cls.mkdir(parents=True)
    rgb = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(cls / "ok.jpg")
    Image.fromarray(rgb).convert("CMYK").save(cls / "cmyk.jpg")
    Image.fromarray(rgb).convert("L").save(cls / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(cls / "rgba.png")
    Image.fromarray(np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100).save(cls / "sixteen.png")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    (cls / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (cls / "garbage.jpg").write_bytes(b"not an image at all")
    return {"bad": ["truncated.jpg", "garbage.jpg"], "good": ["ok.jpg", "cmyk.jpg", "gray.png", "rgba.png", "sixteen.png"]}


def test_odd_image_modes_convert_and_broken_files_raise_naming_the_file(tmp_path):
    from bam_dense.data.images import BadImage, ImageFolderSource, read_rgb

    names = _write_odd_images(tmp_path)
    src = ImageFolderSource(tmp_path)
    for name in names["good"]:
        img = read_rgb(src.root / "n0" / name)
        assert img.mode == "RGB" and img.size == (24, 24)
    sixteen = np.asarray(read_rgb(src.root / "n0" / "sixteen.png"))
    assert sixteen.max() > 200 and sixteen.min() == 0  # scaled from 16 bits, not clipped to white
    for name in names["bad"]:
        with pytest.raises(BadImage, match=name):
            read_rgb(src.root / "n0" / name)


def test_unreadable_images_are_skipped_counted_and_stop_the_run_past_the_threshold(tmp_path, capfd):
    _write_odd_images(tmp_path / "data")
    cfg = tiny_pretrain_dict(tmp_path / "run", data={"path": str(tmp_path / "data"), "batch_size_per_gpu": 2, "max_bad_fraction": 0.5},
                             optim={"epochs": 1, "warmup_epochs": 0}, run={"max_steps": 3})
    summary = Trainer(load_config(data=cfg)).train()
    assert summary.steps == 3
    assert "skipped unreadable image" in capfd.readouterr().err
    cfg["data"]["max_bad_fraction"] = 0.05
    cfg["run"]["output_dir"] = str(tmp_path / "run2")
    from bam_dense.engine.trainer import BadDataError

    with pytest.raises(BadDataError, match="unreadable images so far"):
        Trainer(load_config(data=cfg)).train()


# ---------------------------------------------------------------------------- k-NN monitor subset
def _many_class_folder(root: Path, classes: int = 40, per_class: int = 5) -> Path:
    for c in range(classes):
        (root / f"n{c:03d}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (6 * c, 40 * i, 128)).save(root / f"n{c:03d}" / f"{i}.png")
    return root


def test_knn_balanced_subset_is_seeded_random_and_class_balanced():
    from bam_dense.engine.knn import balanced_subset

    targets = [c for c in range(100) for _ in range(30)]  # class-sorted, as an ImageFolder listing
    subset = balanced_subset(targets, 250, seed=0)
    counts = np.bincount([targets[i] for i in subset], minlength=100)
    assert len(subset) == 250 and len(set(subset)) == 250
    assert set(counts.tolist()) == {2, 3} and (counts == 3).sum() == 50  # 250 // 100 each, 50 classes one more
    assert subset == balanced_subset(targets, 250, seed=0) and subset != balanced_subset(targets, 250, seed=1)
    assert subset != list(range(250))  # not the head of the class-sorted listing
    assert balanced_subset(targets, 3000) is None and balanced_subset([0, 0, 1], 2) in ([0, 2], [1, 2])


def test_knn_monitor_draws_its_train_images_from_every_class(tmp_path, monkeypatch):
    import bam_dense.engine.trainer as trainer_module

    data = _many_class_folder(tmp_path / "imagenet")
    cfg = tiny_pretrain_dict(tmp_path / "run", run={"max_steps": 1},
                             eval={"knn": {"enabled": True, "train_path": str(data), "val_path": str(data),
                                           "max_train_images": 40, "image_size": 16, "resize_size": 16, "batch_size": 64}})
    trainer = Trainer(load_config(data=cfg))
    real, labels = trainer_module.extract, []

    def spy(*args, **kwargs):
        feats, lab = real(*args, **kwargs)
        labels.append(lab.tolist())
        return feats, lab

    monkeypatch.setattr(trainer_module, "extract", spy)
    assert 0.0 <= trainer.knn() <= 1.0
    train_labels = labels[0]
    # 40 of 200 images over 40 classes: one per class (the first 40 of the listing would be 8 classes)
    assert sorted(train_labels) == list(range(40))
    assert len(labels[1]) == 200  # the validation set is used whole


# ---------------------------------------------------------------------------- NaN handling
def _poison(trainer: Trainer, at_step: int) -> None:
    original = trainer.method.loss

    def loss(s_out, t_out, ctx):
        value, terms = original(s_out, t_out, ctx)
        if ctx.step == at_step:
            value = value * float("nan")
            terms = {k: v * float("nan") for k, v in terms.items()}
        return value, terms

    trainer.method.loss = loss


def test_nan_loss_stops_naming_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = load_config(data=tiny_pretrain_dict(tmp_path, run={"checkpoint_every": 2}))
    trainer = Trainer(cfg)
    _poison(trainer, at_step=3)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 3 \(epoch 0\): loss=nan, bam=nan"):
        trainer.train()
    last = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=True)
    assert last["step"] == 2
    assert all(torch.isfinite(v).all() for v in last["student"].values() if v.is_floating_point())


def test_nan_policy_skip_drops_the_step_and_continues(tmp_path):
    cfg = load_config(data=tiny_pretrain_dict(tmp_path, run={"nan_policy": "skip", "max_steps": 5}))
    trainer = Trainer(cfg)
    _poison(trainer, at_step=1)
    summary = trainer.train()
    assert summary.steps == 5 and math.isfinite(summary.last_loss)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "skipped" and "step 1" in r["reason"] for r in rows)


# ---------------------------------------------------------------------------- checkpoints, resume, signals
def _write_config(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_pretrain_dict(tmp_path / "run", **sections)))
    return path


def _pretrain_cmd(config: Path, *overrides: str) -> list[str]:
    return [PYTHON, str(REPO / "pretrain" / "train.py"), "--config", str(config), *overrides]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_logs_hold_every_loss_term_and_engine_figure(tmp_path):
    cfg = load_config(data=tiny_pretrain_dict(tmp_path, run={"max_steps": 2, "tensorboard": True}))
    Trainer(cfg).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 2
    for key in ("loss", "bam", "lr", "wd", "teacher_momentum", "grad_norm", "images_per_s", "data_wait_share", "peak_memory_mb"):
        assert key in train[0], key
    assert (tmp_path / "config.yaml").exists() and list((tmp_path / "tb").glob("events.out.tfevents.*"))
    saved = load_config(tmp_path / "config.yaml")
    assert saved.model.kwargs == cfg.model.kwargs


@pytest.mark.parametrize("augment_on", ["worker", "device"])
def test_resume_after_sigkill_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path, augment_on):
    sections = dict(optim={"epochs": 6, "warmup_epochs": 1}, run={"checkpoint_every": 3, "log_every": 1},
                    data={"num_workers": 1, "augment_on": augment_on})
    config = _write_config(tmp_path, **sections)
    straight = tmp_path / "straight"
    subprocess.run(_pretrain_cmd(config, f"run.output_dir={straight}"), check=True, env=_env(), capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_pretrain_cmd(config, f"run.output_dir={killed}"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pth"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(last, weights_only=True)["step"]
    assert 0 < killed_at < 24
    subprocess.run(_pretrain_cmd(config, f"run.output_dir={killed}", "run.resume=auto"), check=True, env=_env(), capture_output=True)

    a = torch.load(straight / "checkpoints" / "last.pth", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pth", weights_only=True)
    assert a["step"] == b["step"] == 24
    for part in ("student", "teacher"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"


def test_sigterm_writes_a_checkpoint_then_exits(tmp_path):
    config = _write_config(tmp_path, optim={"epochs": 50, "warmup_epochs": 1}, run={"checkpoint_every": 1000})
    out = tmp_path / "run"
    proc = subprocess.Popen(_pretrain_cmd(config), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and sum(1 for _ in open(metrics)) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert state["step"] >= 2
    assert "SIGTERM: checkpoint written at step" in output


def test_torchrun_with_two_cpu_processes_trains(tmp_path):
    config = _write_config(tmp_path, run={"max_steps": 3})
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "pretrain" / "train.py"),
           "--config", str(config)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es) on cpu" in proc.stdout
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pth", weights_only=True)
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path):
    from bam_dense.methods import build_method
    from bam_dense.methods.base import StepContext
    from bam_dense.models.backbones import build_backbone

    crops = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    crops += [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9 + i)) for i in range(2)]
    grads = []
    for flag in (False, True):
        cfg = load_config(data=tiny_pretrain_dict(tmp_path, model={"grad_checkpointing": flag}, teacher={"enabled": False}))
        torch.manual_seed(0)
        method = build_method(cfg.method, build_backbone(cfg.model))
        loss, _ = method.loss(method.student(crops), None, StepContext(0, 0, 2, 4))
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in method.student.named_parameters() if p.grad is not None}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-5, atol=1e-6)
