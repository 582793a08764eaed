"""Nothing lost, nothing mislabelled (issue 28): re-runs never credit old results to new inputs, no user file is
replaced unasked, and values or weights that make no sense are refused at the door, each naming the culprit while
every file that existed before stays byte-identical."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_pretrain_dict, tiny_vit_bam_checkpoint

from bam_dense.cli import main
from bam_dense.convert import ConversionError, convert
from bam_dense.core.config import ConfigError, load_config
from bam_dense.core.errors import UserFacingError


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (or of ``root`` itself), by relative path."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root) if p != root else p.name): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run ``bam-dense ARGV`` in this process: (exit status, the last line of stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse
        status = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    return status, err[-1] if err else ""


# ---------------------------------------------------------------------------- 1. re-runs
class PooledFrames:
    """Features = the frames average-pooled by the patch size: deterministic, no model to load."""

    patch = 8

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(frames, self.patch)


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory) -> Path:
    from bam_dense.data import synthetic

    return synthetic.make("davis", tmp_path_factory.mktemp("davis") / "davis", num=1, size=64, seed=0)


def _propagate(davis_root: Path, checkpoint: Path, out: Path, **kwargs) -> list[str]:
    from bam_dense.davis.propagate import PropagationParams, run

    params = kwargs.pop("params", PropagationParams(resolution=64))
    return run(str(checkpoint), str(davis_root), str(out), params=params, extractor=PooledFrames(), **kwargs)


def test_propagate_into_results_of_another_checkpoint_is_refused_naming_the_difference(davis_root, tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"checkpoint a")
    b.write_bytes(b"checkpoint b, other weights")
    out = tmp_path / "results"
    assert _propagate(davis_root, a, out)
    before = snapshot(out)
    with pytest.raises(UserFacingError, match=r"holds propagation results of other inputs \(checkpoint: .*"
                                              + hashlib.sha256(b"checkpoint b, other weights").hexdigest()
                                              + r".*--overwrite"):
        _propagate(davis_root, b, out)
    assert snapshot(out) == before
    assert json.loads((out / "propagation.json").read_text())["checkpoint"] == str(a)


def test_propagate_with_other_options_is_refused_naming_the_option(davis_root, tmp_path):
    from bam_dense.davis.propagate import PropagationParams

    ckpt = tmp_path / "a.pth"
    ckpt.write_bytes(b"checkpoint a")
    out = tmp_path / "results"
    _propagate(davis_root, ckpt, out)
    before = snapshot(out)
    with pytest.raises(UserFacingError, match=r"temperature: 0.1 there, 0.2 now"):
        _propagate(davis_root, ckpt, out, params=PropagationParams(resolution=64, temperature=0.2))
    assert snapshot(out) == before


def test_propagate_resumes_with_the_same_inputs_and_overwrite_starts_clean(davis_root, tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"checkpoint a")
    b.write_bytes(b"checkpoint b")
    out = tmp_path / "results"
    first = _propagate(davis_root, a, out)
    (out / "metrics.json").write_text("{}")  # what `davis eval` wrote for a
    moved = tmp_path / "moved.pth"
    a.rename(moved)  # the same content under another name is the same input
    assert _propagate(davis_root, moved, out) == []  # every sequence done: skipped
    assert _propagate(davis_root, b, out, overwrite=True) == first  # recomputed, none skipped
    assert not (out / "metrics.json").exists()  # the scores of a went with its masks
    record = json.loads((out / "propagation.json").read_text())
    assert record["checkpoint"] == str(b) and record["inputs"]["checkpoint"]["size"] == len(b"checkpoint b")


def test_propagate_refuses_results_without_a_record(davis_root, tmp_path):
    ckpt = tmp_path / "a.pth"
    ckpt.write_bytes(b"checkpoint a")
    out = tmp_path / "results"
    _propagate(davis_root, ckpt, out)
    (out / "propagation.json").unlink()  # results of unknown origin
    before = snapshot(out)
    with pytest.raises(UserFacingError, match=r"propagation.json is missing or records no inputs"):
        _propagate(davis_root, ckpt, out)
    assert snapshot(out) == before


def test_propagate_refuses_to_write_into_the_davis_folder(davis_root, tmp_path):
    ckpt = tmp_path / "a.pth"
    ckpt.write_bytes(b"checkpoint a")
    before = snapshot(davis_root)
    with pytest.raises(UserFacingError, match=r"is the DAVIS folder itself"):
        _propagate(davis_root, ckpt, davis_root / ".")
    assert snapshot(davis_root) == before


def test_propagate_cli_names_the_other_checkpoint_and_the_way_out(davis_root, tmp_path, capsys):
    a = tiny_vit_bam_checkpoint(tmp_path / "a.pth")
    state = torch.load(a, weights_only=True)
    state["teacher"]["backbone.cls_token"] += 1
    b = tmp_path / "b.pth"
    torch.save(state, b)
    out = tmp_path / "results"
    args = ["davis", "propagate", "--davis-root", davis_root, "--out", out, "--resolution", "64", "--device", "cpu"]
    assert cli(capsys, *args, "--checkpoint", a)[0] == 0
    before = snapshot(out)
    status, err = cli(capsys, *args, "--checkpoint", b)
    assert status == 2 and "holds propagation results of other inputs" in err
    assert hashlib.sha256(b.read_bytes()).hexdigest() in err and "--overwrite" in err
    assert snapshot(out) == before
    assert cli(capsys, *args, "--checkpoint", b, "--overwrite")[0] == 0
    assert json.loads((out / "propagation.json").read_text())["checkpoint"] == str(b)
    status, err = cli(capsys, *args[:4], "--out", a, "--checkpoint", b)
    assert status == 2 and f"--out {a} is a file" in err


def _trained(tmp_path: Path, **run) -> Path:
    from bam_dense.engine.trainer import Trainer

    out = tmp_path / "run"
    Trainer(load_config(data=tiny_pretrain_dict(out, run={"max_steps": 1, "count_flops": False, **run}))).train()
    return out


def test_resume_with_another_batch_size_or_lr_is_refused_naming_the_keys(tmp_path):
    from bam_dense.engine.trainer import Trainer

    out = _trained(tmp_path)
    before = snapshot(out)
    cfg = tiny_pretrain_dict(out, run={"max_steps": 2, "count_flops": False})
    cfg["optim"]["lr"] = 5e-3
    cfg["data"]["batch_size_per_gpu"] = 4
    with pytest.raises(UserFacingError, match=r"run.resume: .*last.pth was trained with other settings "
                                              r"\(data.batch_size_per_gpu: 8 in the checkpoint, 4 now; optim.lr: "
                                              r"0.001 in the checkpoint, 0.005 now\)"):
        Trainer(load_config(data=cfg)).train()
    assert snapshot(out) == before


def test_resume_with_a_safe_change_is_recorded_and_the_first_config_kept(tmp_path):
    from bam_dense.engine.trainer import HISTORY_FILE, Trainer

    out = _trained(tmp_path)
    first = yaml.safe_load((out / "config.yaml").read_text())
    Trainer(load_config(data=tiny_pretrain_dict(out, run={"max_steps": 2, "count_flops": False, "log_every": 5}))).train()
    history = [json.loads(line) for line in (out / HISTORY_FILE).read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[0]["config"] == first
    assert history[1]["step"] == 1 and history[1]["changes"] == {"run.log_every": [1, 5], "run.max_steps": [1, 2]}
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["log_every"] == 5


def test_the_keys_safe_to_change_on_resume_are_the_ones_the_docs_list():
    from bam_dense.engine.trainer import RESUME_SAFE

    docs = (Path(__file__).resolve().parents[1] / "docs" / "pretraining.md").read_text()
    listed = docs[docs.index("Safe to change on resume"):docs.index("config_history.jsonl")]
    assert set(re.findall(r"`([a-z0-9_.]+)\*?`", listed)) == set(RESUME_SAFE)


# ---------------------------------------------------------------------------- 2. overwrites
@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return tiny_vit_bam_checkpoint(tmp_path / "ckpt.pth")


def test_convert_refuses_an_existing_out_without_force(checkpoint, tmp_path, capsys):
    out = tmp_path / "encoder.pth"
    out.write_bytes(b"somebody's file")
    status, err = cli(capsys, "convert", checkpoint, "--to", "timm", "--out", out)
    assert status == 2 and f"--out {out} already exists" in err and "--force" in err
    assert out.read_bytes() == b"somebody's file"
    assert cli(capsys, "convert", checkpoint, "--to", "timm", "--out", out, "--force")[0] == 0
    assert "pos_embed" in torch.load(out, weights_only=True)


@pytest.mark.parametrize("through_link", [False, True])
def test_convert_refuses_its_own_source_even_with_force(checkpoint, tmp_path, capsys, through_link):
    before = snapshot(checkpoint)
    out = checkpoint
    if through_link:
        out = tmp_path / "link.pth"
        out.symlink_to(checkpoint)
    status, err = cli(capsys, "convert", checkpoint, "--to", "timm", "--out", out, "--force")
    assert status == 2 and f"is the input {checkpoint} itself" in err
    assert snapshot(checkpoint) == before


def test_convert_refuses_a_folder_as_a_file_out_and_a_full_folder_for_timm_folder(checkpoint, tmp_path, capsys):
    folder = tmp_path / "somewhere"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    status, err = cli(capsys, "convert", checkpoint, "--to", "timm", "--out", folder, "--force")
    assert status == 2 and f"--out {folder} is a folder; this command writes a file" in err
    status, err = cli(capsys, "convert", checkpoint, "--to", "timm-folder", "--out", folder)
    assert status == 2 and "already exists and is not empty" in err
    assert snapshot(folder) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}


@pytest.mark.parametrize("argv", [
    ["eval", "linear", "--checkpoint", "c.pth", "--data-root", "d"],
    ["eval", "retrieval", "--checkpoint", "c.pth", "--dataset", "voc", "--data-root", "d"],
    ["probe", "--checkpoint", "c.pth", "--ade-root", "d"],
    ["seg", "test", "config.py", "--checkpoint", "c.pth"],
])
def test_metrics_out_is_not_replaced_without_force(argv, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    out.write_text('{"mIoU": 41.2}')
    status, err = cli(capsys, *argv, "--out", out)
    assert status == 2 and f"--out {out} already exists" in err
    assert out.read_text() == '{"mIoU": 41.2}'
    status, err = cli(capsys, *argv, "--out", tmp_path)
    assert status == 2 and "is a folder; this command writes a file" in err


def test_make_synthetic_refuses_a_folder_that_holds_data(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "real.JPEG").write_bytes(b"a real image")
    before = snapshot(tmp_path)
    status, err = cli(capsys, "make-synthetic", "imagenet", "--root", tmp_path)
    assert status == 2 and f"--root {tmp_path} already exists and is not empty" in err
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- 3. values and weights
@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.lr=-0.001", "optim.lr: must be > 0, got -0.001"),
    ("method.temperature=-0.1", "method.temperature: must be > 0, got -0.1"),
    ("method.eps=0", "method.eps: must be > 0, got 0.0"),
    ("teacher.momentum=1.5", "teacher.momentum: must be in [0, 1], got 1.5"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1]: must be in [0, 1), got 1.0"),
    ("method.projector.layers=0", "method.projector.layers: must be >= 1, got 0"),
    ("optim.weight_decay=.nan", "optim.weight_decay: must be >= 0, got nan"),
])
def test_values_out_of_range_are_refused_naming_the_override(override, message, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_pretrain_dict(tmp_path)))
    with pytest.raises(ConfigError) as err:
        load_config(path, ["run.log_every=2", override])
    assert str(err.value) == f"{message} (in the command-line override {override.split('=')[0]}=" \
                             f"{yaml.safe_load(override.split('=')[1])!r})"


def test_dino_temperatures_have_ranges_too(tmp_path):
    cfg = tiny_pretrain_dict(tmp_path, method={"name": "dino"})
    cfg["method"] = {"name": "dino", "teacher_temp": -0.04}
    with pytest.raises(ConfigError, match=r"^method.teacher_temp: must be > 0, got -0.04$"):
        load_config(data=cfg)


def test_a_bad_value_in_the_file_is_blamed_on_the_file_not_on_a_good_override(tmp_path):
    cfg = tiny_pretrain_dict(tmp_path)
    cfg["optim"]["lr"] = 0
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=rf"^optim.lr: must be > 0, got 0.0 \(in {path}\)$"):
        load_config(path, ["optim.epochs=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.* \(in the command-line override optim.lrr=1\)"):
        load_config(path, ["optim.lr=0.1", "optim.lrr=1"])


def test_pretrain_cli_reports_a_negative_lr_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_pretrain_dict(tmp_path / "run")))
    status, err = cli(capsys, "pretrain", "--config", path, "optim.lr=-1")
    assert status == 2 and err.endswith("optim.lr: must be > 0, got -1.0 (in the command-line override optim.lr=-1)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_the_converter_and_the_encoder_loader(checkpoint, tmp_path, value):
    from bam_dense.encoders import load_backbone

    state = torch.load(checkpoint, weights_only=True)
    state["teacher"]["backbone.blocks.0.attn.qkv.weight"][0, 0] = value
    torch.save(state, checkpoint)
    before = snapshot(checkpoint)
    culprit = r"tensor blocks.0.attn.qkv.weight holds non-finite values"
    out = tmp_path / "out.pth"
    with pytest.raises(ConversionError, match=culprit):
        convert(checkpoint, "timm", out)
    assert not out.exists() and snapshot(checkpoint) == before
    with pytest.raises(ConversionError, match=culprit):
        load_backbone(str(checkpoint), None, None, False)


def test_weight_check_refuses_non_finite_framework_weights(tmp_path):
    from bam_dense.downstream.weight_check import check_backbone

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["0.bias"][1] = float("nan")
    path = tmp_path / "mmseg.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserFacingError, match=rf"{path}: tensor 0.bias holds non-finite values \(1 NaN, 0 inf of 2\)"):
        check_backbone(net, str(path), backbone_type="ResNet")


def test_convert_img_size_below_the_patch_is_refused(checkpoint, tmp_path, capsys):
    status, err = cli(capsys, "convert", checkpoint, "--to", "mmseg", "--out", tmp_path / "o.pth", "--img-size", "0")
    assert status == 2 and "argument --img-size: must be at least 1, got 0" in err
    with pytest.raises(ConversionError, match=r"--img-size 2: must be at least the patch size"):
        convert(checkpoint, "mmseg", tmp_path / "o.pth", img_size=2)
    assert not (tmp_path / "o.pth").exists()


def test_davis_eval_over_no_sequences_is_an_error_and_writes_nothing(davis_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "davis"
    shutil.copytree(davis_root, root)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n")
    results = tmp_path / "results"
    results.mkdir()
    status, err = cli(capsys, "davis", "eval", "--davis-root", root, "--results", results)
    assert status == 2 and "val.txt lists no sequences: nothing to evaluate" in err
    assert not any(results.iterdir())


def test_davis_eval_with_no_object_to_score_is_an_error():
    from bam_dense.davis.evaluate import DavisError, SequenceScores, aggregate

    with pytest.raises(DavisError, match=r"no object to score: .*\(bike\)"):
        aggregate([SequenceScores("bike")])


def _poison(trainer, at_step: int) -> None:
    original = trainer.method.loss

    def loss(s_out, t_out, ctx):
        value, terms = original(s_out, t_out, ctx)
        return (value * float("nan"), terms) if ctx.step >= at_step else (value, terms)

    trainer.method.loss = loss


def test_nan_stop_before_the_first_checkpoint_says_none_was_written(tmp_path):
    from bam_dense.engine.trainer import NonFiniteLoss, Trainer

    trainer = Trainer(load_config(data=tiny_pretrain_dict(tmp_path, run={"count_flops": False})))
    _poison(trainer, at_step=1)
    with pytest.raises(NonFiniteLoss, match=r"step 1 .*no checkpoint was written: the run stopped before its first "
                                            r"one \(run.checkpoint_every=1000\)") as err:
        trainer.train()
    assert "last.pth" not in str(err.value) and not (tmp_path / "checkpoints").exists()


def test_summary_after_sigterm_counts_the_steps_that_ran(tmp_path, monkeypatch):
    from bam_dense.engine import trainer as engine

    step = engine.Trainer.train_step

    def terminated_at_2(self, crops, timings=None):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler is installed during train()
        return step(self, crops, timings)

    monkeypatch.setattr(engine.Trainer, "train_step", terminated_at_2)
    summary = engine.run(load_config(data=tiny_pretrain_dict(tmp_path, run={"count_flops": False})))
    payload = json.loads((tmp_path / "summary.json").read_text())
    assert summary.preempted and payload["steps"] == 3 and payload["completed"] is False
    assert payload["epochs_done"] == 0 and math.isfinite(payload["last_loss"])
    assert torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=True)["step"] == 3
