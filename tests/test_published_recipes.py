"""Published rows carry the recipe that produced them, and the report says "same recipe" only when it is.

Source of the iBOT recipe: bytedance/ibot@da316d8 evaluation/semantic_segmentation/configs/upernet/
vit_small_512_ade20k_160k.py (+ its _base_ files) and mmcv_custom/register_backbone.py (taps without norm).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from bam_dense.bench.published import BENCHMARKS, RECIPES, Recipe
from bam_dense.bench.report import recipe_check, write_report
from bam_dense.core.paths import bundled

MMSEG = bundled("configs/mmseg", required=True)


def _resolved(name: str) -> dict:
    from mmengine.config import Config

    from bam_dense.downstream.mm_common import resolved_config

    return resolved_config(Config.fromfile(MMSEG / name))


def test_every_published_row_names_a_known_recipe_with_a_source():
    for bench in BENCHMARKS.values():
        assert bench.recipe in RECIPES, bench.id
        for row in bench.results:
            recipe = bench.recipe_of(row)
            assert recipe.source, (bench.id, row.method)


def test_recipe_check_names_each_differing_value():
    recipe = Recipe("r", "src", {"a.lr": 3e-5, "a.kind": "VisionTransformer"})
    assert recipe_check(recipe, [{"a": {"lr": 3e-5, "kind": "VisionTransformer"}}]) == (True, "same recipe (2 values checked)")
    same, words = recipe_check(recipe, [{"a": {"lr": 1e-4, "kind": "VisionTransformer"}}])
    assert not same and "`a.lr` 0.0001 (recipe 3e-05)" in words and "a.kind" not in words
    same, words = recipe_check(recipe, [{"a": {"lr": 3e-5}}])
    assert not same and "`a.kind` missing" in words
    assert recipe_check(recipe, [None]) == (False, "not checked: these runs recorded no config")
    assert not recipe_check(RECIPES["unverified"], [{"a": {}}])[0]


def test_ibot_vits_config_is_the_ibot_recipe_and_the_mae_style_one_is_not():
    ibot, mae_style = RECIPES["ibot-upernet-vits"], _resolved("upernet_vit-s16_ade20k-512x512_160k.py")
    assert recipe_check(ibot, [_resolved("upernet_vit-s16_ibot_ade20k-512x512_160k.py")])[0]
    same, words = recipe_check(ibot, [mae_style])
    assert not same and "optim_wrapper.optimizer.lr" in words and "model.backbone.type" in words
    assert recipe_check(RECIPES["mae-upernet-vit"], [_resolved("upernet_vit-b16_ade20k-512x512_160k.py")])[0]


def test_ibot_vits_config_builds_the_ibot_network_and_layer_decay():
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(MMSEG / "upernet_vit-s16_ibot_ade20k-512x512_160k.py")
    b = cfg.model.backbone
    assert (b.type, b.embed_dims, b.num_heads, b.out_indices, b.drop_path_rate, b.final_norm) == (
        "VisionTransformer", 384, 6, [3, 5, 7, 11], 0.1, False)
    assert "init_values" not in b  # no layer scale: the MAE base's key must not leak through
    assert [s.type for s in cfg.param_scheduler] == ["LinearLR", "PolyLR"]
    assert (cfg.param_scheduler[0].end, cfg.param_scheduler[0].start_factor, cfg.param_scheduler[1].power) == (1500, 1e-6, 1.0)
    model = MODELS.build(cfg.model)
    names = [n for n, _ in model.named_parameters()]
    assert not any("gamma" in n or "ls1" in n for n in names)  # no LayerScale anywhere
    assert not any(n.startswith("backbone.ln1") or n.startswith("backbone.norm") for n in names)  # no final norm
    assert model.decode_head.channels == 384 and model.auxiliary_head.channels == 256
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lr_of = {}
    for group in wrapper.optimizer.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    params = dict(model.named_parameters())
    # mmseg's layer decay: num_layers + 2 ids; block i has id i + 1, heads the last id (scale 1)
    assert math.isclose(lr_of[id(params["backbone.layers.0.ffn.layers.1.weight"])], 3e-5 * 0.9 ** 12, rel_tol=1e-6)
    assert math.isclose(lr_of[id(params["backbone.layers.11.ffn.layers.1.weight"])], 3e-5 * 0.9 ** 1, rel_tol=1e-6)
    assert math.isclose(lr_of[id(params["decode_head.conv_seg.weight"])], 3e-5, rel_tol=1e-6)


def _run_dir(tmp_path: Path, resolved: dict) -> Path:
    from bam_dense.bench.conditions import RECORDERS

    run_dir = tmp_path / "run"
    plan = {"name": "p", "runs": [{"name": "ours", "method": "bam"}],
            "steps": [{"name": "ade", "kind": "seg", "benchmark": "ade20k_upernet_vits16", "config": "x.py"}]}
    (run_dir / "ours" / "ade").mkdir(parents=True)
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(plan))
    conditions = {**RECORDERS["seg"]([], run_dir, {"resolved_config": resolved}), "arch": "ViT-S", "patch": 16, "registers": 0,
                  "pretrain_data": "ImageNet-1k", "pretrain_epochs": 800}
    (run_dir / "ours" / "ade" / "metrics.json").write_text(json.dumps({"metrics": {"mIoU": 44.0}, "resolved_config": resolved,
                                                                       "conditions": conditions}))
    return run_dir


@pytest.mark.parametrize(("config", "verdict"), [("upernet_vit-s16_ibot_ade20k-512x512_160k.py", "same recipe"),
                                                 ("upernet_vit-s16_ade20k-512x512_160k.py", "different recipe")])
def test_report_calls_the_ibot_row_same_recipe_only_for_the_ibot_config(tmp_path, config, verdict):
    run_dir = _run_dir(tmp_path, _resolved(config))
    report = write_report([run_dir], run_dir).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| iBOT ViT-S/16 |"))
    assert verdict in row and "ibot-upernet-vits" in row
    assert "Published, same protocol" not in report


# ---------------------------------------------------------------------------------------------
# The leaderboard's conditions: every row records them, the report groups by protocol and resolution
# ---------------------------------------------------------------------------------------------


def test_every_published_row_records_every_condition():
    import dataclasses

    from bam_dense.bench.published import PROTOCOLS, missing_fields

    for bench in BENCHMARKS.values():
        assert bench.kind in PROTOCOLS, bench.id
        for row in bench.results:
            assert missing_fields(bench, row) == [], (bench.id, row.method)
    bench = BENCHMARKS["ade20k_linear_vits"]
    row = bench.results[0]
    assert missing_fields(bench, dataclasses.replace(row, data="")) == ["data"]
    assert missing_fields(bench, dataclasses.replace(row, epochs=None, source="")) == ["source", "epochs"]
    assert missing_fields(bench, dataclasses.replace(row, patch=None)) == ["patch"]  # a ViT needs its patch size
    assert missing_fields(dataclasses.replace(bench, kind="linear-ish"), row)[0].startswith("protocol")


def test_the_issue_rows_are_listed_with_their_protocols():
    def value(bench_id, method):
        return next(r.value for r in BENCHMARKS[bench_id].results if r.method == method)

    assert (value("ade20k_linear_vits", "DINOv2 ViT-S/14"), value("ade20k_linear_vitb", "DINOv2 ViT-B/14")) == (44.3, 47.3)
    assert (value("ade20k_linear_vits", "DINOv3 ViT-S/16"), value("ade20k_linear_vitb", "DINOv3 ViT-B/16")) == (47.0, 51.8)
    assert value("ade20k_linear_vitb", "iBOT ViT-B/16") == 38.3
    assert value("voc12_retrieval_vitb16", "DINO ViT-B/16") == 55.9
    assert value("voc12_retrieval_vitb16", "DINO ViT-B/16 (open-hummingbird-eval)") == 55.7
    assert value("voc12_retrieval_vits16", "CrIBo ViT-S/16") == 73.2 and value("voc12_retrieval_vitb16", "CrIBo ViT-B/16") == 74.9
    cossl = next(r for r in BENCHMARKS["imagenet_linear_r50"].results if r.method.startswith("CO-SSL"))
    assert (cossl.value, cossl.epochs, cossl.data) == (71.5, 100, "ImageNet-1k")
    assert BENCHMARKS["imagenet_linear_r50"].recipe_of(cossl).id == "unverified"  # never called the same protocol
    kinds = {b: BENCHMARKS[b].kind for b in ("ade20k_linear_vits", "voc12_retrieval_vitb16", "davis17_val", "ade20k_upernet_vitb16")}
    assert kinds == {"ade20k_linear_vits": "frozen linear", "voc12_retrieval_vitb16": "retrieval", "davis17_val": "propagation",
                     "ade20k_upernet_vitb16": "fine-tuned"}


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


DINOV3_S16 = {"arch": "ViT-S", "patch": 16, "registers": 4, "pos_embed_rule": "rope",
              "pretrain_data": "LVD-1689M (distilled from ViT-7B)", "pretrain_epochs": "not stated (distilled)"}
DAVIS_480 = {"dataset": "DAVIS-2017", "split": "val", "resolution": "short side 480", "protocol": "propagation",
             "layers": "last block, normed patch tokens",
             "propagation": "top-5, temperature 0.1, first + 7 previous frames, radius 12"}


def _leaderboard_dir(tmp_path: Path, encoder: dict) -> Path:
    """A run directory whose ADE20K linear step ran the shipped linear config (its conditions recorded as ``bench
    run`` records them from the resolved config) and whose DAVIS step ran DINO's protocol at 480p, both on the
    encoder ``encoder`` describes."""
    from bam_dense.bench.conditions import RECORDERS

    run_dir = tmp_path / "run"
    plan = {"name": "p", "runs": [{"name": "enc", "method": "m", "checkpoint": "c.pth"}],
            "steps": [{"name": "ade-linear", "kind": "seg", "benchmark": "ade20k_linear_vits", "config": "x.py"},
                      {"name": "davis", "kind": "davis", "benchmark": "davis17_val", "davis_root": "d"}]}
    (run_dir / "enc" / "ade-linear").mkdir(parents=True)
    (run_dir / "enc" / "davis").mkdir(parents=True)
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(plan))
    # what the recipe requires, with mmseg's ADE20K pipelines (RandomCrop 512, test Resize (2048, 512)) and data type
    resolved = _nested({**RECIPES["dinov3-linear-seg"].requires, "test_dataloader.dataset.type": "ADE20KDataset",
                        "test_dataloader.dataset.pipeline": [{"type": "Resize", "scale": [2048, 512]}],
                        "train_dataloader.dataset.pipeline": [{"type": "RandomCrop", "crop_size": [512, 512]}],
                        "model.test_cfg.stride": [341, 341]})
    seg = {**RECORDERS["seg"]([], run_dir, {"resolved_config": resolved}), **encoder}
    (run_dir / "enc" / "ade-linear" / "metrics.json").write_text(json.dumps({"metrics": {"mIoU": 46.0},
                                                                             "resolved_config": resolved, "conditions": seg}))
    (run_dir / "enc" / "davis" / "metrics.json").write_text(json.dumps({"metrics": {"J&F-Mean": 0.6},
                                                                        "conditions": {**DAVIS_480, **encoder}}))
    return run_dir


def _row(report: str, method: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(f"| {method} |"))


def test_report_groups_by_recorded_conditions_and_says_same_protocol_only_when_every_condition_matches(tmp_path):
    run_dir = _leaderboard_dir(tmp_path, {**DINOV3_S16, "pos_embed_rule": "rope"})
    report = write_report([run_dir], run_dir).read_text()
    linear = report.index("# Protocol: frozen linear, ADE20K, input 512 crops; test short side 512, sliding window 512/341")
    propagation = report.index("# Protocol: propagation, DAVIS-2017, input short side 480")
    assert linear < report.index("## ADE20K, frozen linear") < propagation < report.index("## DAVIS-2017 val")
    same = _row(report, "DINOv3 ViT-S/16")
    assert "**same protocol**" in same and "not stated by the source: layers fed to the head" in same
    rerun = _row(report, "DINOv2 ViT-S/14 (DINOv3's re-run)")  # same recipe, other encoder conditions
    assert "not the same protocol" in rerun and "same recipe" in rerun
    assert "patch size 14 (published) vs 16 (enc)" in rerun and "pretraining data LVD-142M" in rerun
    assert "register tokens 0 (published) vs 4 (enc)" in rerun
    ms = _row(report, "DINOv2 ViT-S/14 +ms")
    assert "input resolution 640 px crops, multi-scale test (published) vs 512 crops" in ms and "not checked" in ms
    davis = _row(report, "DINO ViT-S/16")
    assert "not the same protocol" in davis and "architecture" not in davis.split("|")[6]  # ViT-S on both sides
    assert "position-embedding rule dino (published) vs rope (enc)" in davis
    dinov3_960 = _row(report, "DINOv3 ViT-S/16 (short side 960)")  # the DINOv3 protocol: another resolution
    assert "input resolution short side 960 (published) vs short side 480 (enc)" in dinov3_960
    assert report.count("**same protocol**") == 1


def test_a_step_that_does_not_record_a_condition_is_never_the_same_protocol(tmp_path):
    encoder = {k: v for k, v in DINOV3_S16.items() if k != "pretrain_epochs"}
    report = write_report([_leaderboard_dir(tmp_path, encoder)], tmp_path / "run").read_text()
    row = _row(report, "DINOv3 ViT-S/16")
    assert "not the same protocol" in row and "pretraining epochs not recorded for enc" in row and "same recipe" in row
    assert "**same protocol**" not in report


def test_a_step_without_recorded_conditions_is_filed_apart_and_never_compared(tmp_path):
    run_dir = _leaderboard_dir(tmp_path, DINOV3_S16)
    metrics = run_dir / "enc" / "davis" / "metrics.json"
    metrics.write_text(json.dumps({"metrics": {"J&F-Mean": 0.6}}))  # written by an older bam-dense
    report = write_report([run_dir], run_dir).read_text()
    apart = report.split("# Conditions not recorded")[1]
    assert "| enc | m | 60.00 |" in apart and "DINO ViT-S/16" not in apart


def test_the_leaderboard_writes_architectures_as_the_published_rows_do():
    from bam_dense.bench.conditions import describe_arch, encoder_facts

    assert describe_arch("vit_base_patch16_224") == ("ViT-B", 16)
    assert describe_arch("vit_small_patch16_224", {"patch_size": 8}) == ("ViT-S", 8)
    assert describe_arch("resnet50") == ("ResNet-50", None)
    assert encoder_facts("resnet50", {}) == {"arch": "ResNet-50", "patch": "n/a", "registers": 0, "family": "cnn"}
    assert encoder_facts("vit_base_patch14_reg4_dinov2", {}) == {"arch": "ViT-B", "patch": 14, "registers": 4,
                                                                 "family": "vit"}
    assert encoder_facts("vit_small_patch16_dinov3", {})["registers"] == 4  # DINOv3's storage tokens


def test_dinov3_imagenet_rows_are_real_labels_and_named_as_a_difference_beside_a_linear_probe_step(tmp_path):
    """DINOv3 publishes ImageNet-ReaL top-1 only: its rows state that label set, a linear-probe step records ImageNet's
    val labels, and the report names the difference instead of calling them the same protocol."""
    from bam_dense.bench.conditions import RECORDERS

    data = tmp_path / "imagenet"  # a user's ImageNet copy: no synthetic mark
    data.mkdir()
    run_dir = tmp_path / "run"
    plan = {"name": "p", "runs": [{"name": "enc", "method": "m", "checkpoint": "c.pth"}],
            "steps": [{"name": "lincls", "kind": "linear", "benchmark": "imagenet_linear_vits", "data_root": str(data)}]}
    (run_dir / "enc" / "lincls").mkdir(parents=True)
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(plan))
    # the parts of the probe's metrics JSON the recorder reads (bam_dense.eval.linear_probe.run, augmented protocol)
    payload = {"protocol": "linear-dino-vits", "resolution": 224, "selection_rule": "last epoch",
               "recipe": {"name": "dino-vits", "family": "vit", "n_last_blocks": 1, "avgpool": True},
               "grid": {"epochs": 100, "learning_rates": [0.001]}, "conditions": {"pos_resample": "rope"}}
    recorded = {**RECORDERS["linear"]([["bam-dense", "eval", "linear", "--data-root", str(data)]], run_dir, payload),
                **DINOV3_S16}
    assert recorded["labels"] == "ImageNet val" and recorded["dataset"] == "ImageNet-1k"
    (run_dir / "enc" / "lincls" / "metrics.json").write_text(json.dumps({"metrics": {"top1": 80.0},
                                                                         "conditions": recorded}))
    report = write_report([run_dir], run_dir).read_text()
    real = _row(report, "DINOv3 ViT-S/16 (ImageNet-ReaL labels)")
    assert "| 87.00 |" in real and "MODEL_CARD.md" in real
    assert "not the same protocol" in real
    assert "evaluation labels ImageNet-ReaL (published) vs ImageNet val (enc)" in real
    assert "input resolution not stated by the source (published) vs 224 (center crop) (enc)" in real
    assert "evaluation labels" not in _row(report, "DINOv2 ViT-S/14")  # an ImageNet val row: same labels
    assert "**same protocol**" not in report
    rows = {r.method: r for b in ("imagenet_linear_vitb", "imagenet_linear_vitl") for r in BENCHMARKS[b].results}
    assert rows["DINOv3 ViT-B/16 (ImageNet-ReaL labels)"].value == 89.3
    assert rows["DINOv3 ViT-L/16 (ImageNet-ReaL labels)"].value == 90.2
    assert all(BENCHMARKS[b].conditions_of(r)["labels"] == "ImageNet-ReaL"
               for b in ("imagenet_linear_vits", "imagenet_linear_vitb", "imagenet_linear_vitl")
               for r in BENCHMARKS[b].results if r.method.startswith("DINOv3"))
