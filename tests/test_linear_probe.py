"""ImageNet linear probe: known answers, DINO's feature recipes, the cached features, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import tiny_vit_bam_checkpoint

from bam_dense.core.errors import UserFacingError
from bam_dense.eval import linear_probe
from bam_dense.eval.features import FeatureCache
from bam_dense.eval.linear_probe import RECIPES, linear_input, probe_features, train_grid

CODES = torch.randn(10, 32, generator=torch.Generator().manual_seed(100))  # one code per class


def _class_coded(n_per_class: int, num_classes: int, dim: int, seed: int, informative: bool):
    """Features ``3 * code[class] + noise`` (informative) or noise alone, ``n_per_class`` per class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), dim, generator=gen)
    if not informative:
        return noise, labels
    return 3 * CODES[:num_classes, :dim][labels] + 0.3 * noise, labels


def test_class_encoding_features_reach_accuracy_one_and_random_features_sit_at_chance():
    x, y = _class_coded(20, 10, 32, 0, True)
    vx, vy = _class_coded(10, 10, 32, 1, True)
    result = train_grid(x, y, vx, vy, 10, RECIPES["dino-vits"], learning_rates=[0.1, 1.0], epochs=15, batch_size=64)
    assert result.selected_top1 == 1.0 and result.learning_rates == [0.001, 0.1, 1.0]

    rx, ry = _class_coded(40, 10, 32, 2, False)
    rvx, rvy = _class_coded(60, 10, 32, 3, False)
    chance = train_grid(rx, ry, rvx, rvy, 10, RECIPES["bam"], learning_rates=[0.01, 0.1], epochs=4, batch_size=64,
                        selection="holdout")
    # 600 validation features independent of their labels: 1/10, with a standard error of 0.012
    assert chance.selected_top1 == pytest.approx(0.1, abs=0.05)
    assert all(acc == pytest.approx(0.1, abs=0.05) for acc in chance.val_top1)
    assert chance.holdout_top1 is not None and len(chance.holdout_top1) == 3


def test_lr_grid_trains_each_classifier_as_if_alone():
    """One pass for the grid: each classifier's updates equal those of a lone run at its learning rate."""
    x, y = _class_coded(8, 4, 6, 0, True)
    recipe = RECIPES["dino-vitb"]
    torch.manual_seed(0)
    together = train_grid(x, y, x, y, 4, recipe, learning_rates=[0.01, 1.0], epochs=3, batch_size=8)
    for lr in (0.01, 1.0):
        torch.manual_seed(0)
        grid = linear_probe.LinearGrid(6, 4, 3, False)
        alone_init = grid.heads[together.learning_rates.index(lr)].state_dict()
        torch.manual_seed(0)
        single = linear_probe.LinearGrid(6, 4, 1, False)
        single.heads[0].load_state_dict(alone_init)
        opt = torch.optim.SGD(single.parameters(), lr=lr * 8 / 256, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3, eta_min=0)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(order), 8):
                idx = order[i:i + 8]
                loss = torch.nn.functional.cross_entropy(single(x[idx])[0], y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        acc = float((single(x)[0].argmax(-1) == y).float().mean())
        assert together.val_top1[together.learning_rates.index(lr)] == pytest.approx(acc)


def _manual_tokens(model, images):
    """Every block's tokens after the final norm, by walking timm's modules."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.norm_pre(x)
    outs = []
    for block in model.blocks:
        x = block(x)
        outs.append(model.norm(x))
    return outs


def test_probe_features_are_dinos_recipe_and_never_average_registers():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, depth=5, embed_dim=32,
                              num_heads=2, img_size=28, dynamic_img_size=True).eval()
    images = torch.randn(2, 3, 28, 28)
    feats = probe_features(model, images)
    tokens = _manual_tokens(model, images)
    torch.testing.assert_close(feats["cls"], torch.stack([t[:, 0] for t in tokens[-4:]], dim=1))
    torch.testing.assert_close(feats["patch_mean"], tokens[-1][:, 5:].mean(1))  # 1 class + 4 register tokens skipped
    assert not torch.allclose(feats["patch_mean"], tokens[-1][:, 1:].mean(1))
    vits = linear_input(feats, RECIPES["dino-vits"])
    vitb = linear_input(feats, RECIPES["dino-vitb"])
    torch.testing.assert_close(vits, torch.cat([t[:, 0] for t in tokens[-4:]], dim=1))
    torch.testing.assert_close(vitb, torch.cat([tokens[-1][:, 0], tokens[-1][:, 5:].mean(1)], dim=1))
    with pytest.raises(UserFacingError, match="needs a ResNet"):
        linear_input(feats, RECIPES["lewel-r50"])



def test_eval_linear_cached_protocol_caches_features_per_checkpoint_and_resolution(synthetic_root, tmp_path, monkeypatch, capsys):
    from bam_dense.cli import main

    ckpt = tiny_vit_bam_checkpoint(tmp_path / "bam.pth")
    args = ["eval", "linear", "--checkpoint", str(ckpt), "--data-root", str(synthetic_root / "imagenet"), "--resolution", "32",
            "--cache-dir", str(tmp_path / "cache"), "--lrs", "0.1", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
            "--protocol", "cached-centre-crop"]
    # width 16: DINO's ViT-S rule (4 class tokens), which a 2-block encoder cannot give
    assert main(args) == 2 and "recipe dino-vits reads 4 blocks, the encoder has 2" in capsys.readouterr().err
    assert main(args + ["--recipe", "dino-vitb", "--out", str(tmp_path / "first.json")]) == 0
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["features_from_cache"] is None  # the refused run stopped before extracting
    assert first["feature_dim"] == 2 * 16 and first["num_classes"] == 10 and first["resolution"] == 32
    assert first["grid"]["learning_rates"] == [0.001, 0.1] and "DINOv2" in first["selection_rule"]
    assert first["protocol"] == first["conditions"]["protocol"] == "linear-cached-centre-crop"
    assert first["conditions"]["augmentation"].startswith("none: centre-crop features")
    assert len(list((tmp_path / "cache").glob("features_*_32px.pt"))) == 2  # training and validation splits
    assert main(args + ["--recipe", "dino-vitb", "--resolution", "48"]) == 0  # another resolution: its own cache
    assert len(list((tmp_path / "cache").glob("features_*px.pt"))) == 4

    def no_extraction(*a, **k):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(FeatureCache, "_extract", no_extraction)
    assert main(args + ["--recipe", "bam", "--out", str(tmp_path / "second.json")]) == 0  # another recipe, same cache
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["features_from_cache"] and second["feature_dim"] == 2 * 16 and second["recipe"]["bn_head"]
    assert "features from" in capsys.readouterr().out


def test_eval_linear_on_a_resnet_uses_pooled_features_and_refuses_a_vit_recipe(synthetic_root, tmp_path):
    out = tmp_path / "r.json"
    record = linear_probe.run("random", str(synthetic_root / "imagenet"), str(out), arch="resnet18", resolution=32,
                              learning_rates=[0.1], epochs=1, device="cpu", progress=False)
    assert record["recipe"]["name"] == "lewel-r50" and record["feature_dim"] == 512
    assert record["grid"]["learning_rates"] == [0.1, 0.4] and list(record["recipe"]["milestones"]) == [30, 40]
    with pytest.raises(UserFacingError, match="recipe dino-vitb is for vit encoders"):
        linear_probe.run("random", str(synthetic_root / "imagenet"), None, recipe="dino-vitb", arch="resnet18",
                         resolution=32, epochs=1, device="cpu", progress=False)


def test_imagenet_layout_errors_name_the_folder(tmp_path):
    (tmp_path / "train" / "n1").mkdir(parents=True)
    with pytest.raises(UserFacingError, match=r"val does not exist"):
        linear_probe._split_sources(tmp_path)


def test_dinov3_probe_features_equal_dinov3s_own_class_and_patch_tokens(tmp_path):
    """DINOv3 (RoPE, 4 storage tokens) through timm: the last class token and the patch average equal the
    tokens DINOv3's own code gave (tests/fixtures/make_dinov3_official_fixture.py)."""
    from bam_dense.encoders import load_backbone

    record = torch.load(Path(__file__).parent / "fixtures" / "dinov3_official.pt", weights_only=True)["qkvb"]
    src = tmp_path / "dinov3.pth"
    torch.save(record["checkpoint"], src)
    backbone = load_backbone(str(src), None, None, False).eval()
    for tag, x in record["inputs"].items():
        feats = probe_features(backbone, x)
        assert feats["cls"].shape == (1, 2, 64)  # both blocks of the 2-block fixture
        torch.testing.assert_close(feats["cls"][:, -1], record["outputs"][tag]["cls"], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(feats["patch_mean"], record["outputs"][tag]["patch"].mean(1), atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- the sources' augmented protocol
def test_the_default_protocol_is_the_sources_augmentation_with_the_recipes_interpolation():
    from torchvision import transforms

    crop, flip = linear_probe.train_transform(224, "bicubic").transforms[:2]
    assert isinstance(crop, transforms.RandomResizedCrop) and crop.size == (224, 224)
    assert crop.scale == (0.08, 1.0) and crop.interpolation == transforms.InterpolationMode.BICUBIC
    assert isinstance(flip, transforms.RandomHorizontalFlip) and flip.p == 0.5
    resize, centre = linear_probe.eval_transform(224, "bilinear").transforms[:2]
    assert resize.size == 256 and resize.interpolation == transforms.InterpolationMode.BILINEAR and centre.size == (224, 224)
    # RandomResizedCrop's default (bilinear) in DINO, BAM, LEWEL, MoCo v3; bicubic in DINOv2's make_classification_*
    assert {n: (r.train_interpolation, r.val_interpolation) for n, r in RECIPES.items()} == {
        "dino-vits": ("bilinear", "bicubic"), "dino-vitb": ("bilinear", "bicubic"), "bam": ("bilinear", "bicubic"),
        "dinov2": ("bicubic", "bicubic"), "mocov3-vit": ("bilinear", "bilinear"), "mocov3-r50": ("bilinear", "bilinear"),
        "lewel-r50": ("bilinear", "bilinear")}  # LEWEL data/transforms.py and MoCo v3 main_lincls.py: Resize(256)


def test_mocov3_recipes_are_main_lincls_and_config_md():
    """facebookresearch/moco-v3 c349e6e: main_lincls.py defaults (90 epochs, batch 1024, lr 0.1, wd 0, momentum 0.9,
    cosine per epoch, lr x batch/256, fc N(0, 0.01)); CONFIG.md: ViT-S and ViT-B with --lr=3, ResNet-50 without --lr."""
    vit, r50 = RECIPES["mocov3-vit"], RECIPES["mocov3-r50"]
    assert (vit.family, vit.n_last_blocks, vit.avgpool, vit.bn_head, vit.lr, vit.epochs, vit.batch_size, vit.schedule) == (
        "vit", 1, False, False, 3.0, 90, 1024, "cosine")
    assert (r50.family, r50.lr, r50.epochs, r50.batch_size, r50.schedule) == ("cnn", 0.1, 90, 1024, "cosine")
    assert RECIPES["lewel-r50"].epochs == 50 and RECIPES["lewel-r50"].milestones == (30, 40)  # scripts/srun_lin.sh
    dinov2 = RECIPES["dinov2"]
    assert dinov2.choices == ((4, True), (1, False), (1, True), (4, False)) and dinov2.lr_grid == linear_probe.LR_GRID
    vit_s = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=1, embed_dim=32, num_heads=2)
    assert linear_probe.default_recipe(vit_s, "mocov3") == "mocov3-vit"
    assert linear_probe.default_recipe(vit_s, "dinov2") == "dinov2" and linear_probe.default_recipe(vit_s, "dino") == "dino-vits"
    r18 = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert linear_probe.default_recipe(r18, "mocov3") == "mocov3-r50" and linear_probe.default_recipe(r18, None) == "lewel-r50"


def test_token_choices_train_together_as_if_alone():
    """DINOv2's grid: every (blocks, avgpool) group beside the others ends where it would have trained alone."""
    x, y = _class_coded(8, 4, 6, 0, True)
    other = torch.randn(len(y), 3, generator=torch.Generator().manual_seed(5))
    lrs = [0.01, 1.0]
    results = []
    for n_inputs in (2, 1):
        def batches(_epoch, n=n_inputs):
            for i in range(0, len(y), 8):
                yield [x[i:i + 8], other[i:i + 8]][:n], y[i:i + 8]

        torch.manual_seed(0)
        model, _ = linear_probe.train_heads(batches, 4, [6, 3][:n_inputs], 4, RECIPES["dinov2"], lrs, 2, 8, "cpu")
        results.append(model.grids[0].state_dict())
    assert set(results[0]) == set(results[1])
    for key in results[1]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=0, atol=0)


def _tiny_vit_checkpoint(path, depth: int = 4):
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=depth, embed_dim=16,
                              num_heads=2, img_size=32)
    torch.save({"format": "bam-dense", "student": {f"backbone.{k}": v for k, v in model.state_dict().items()},
                "teacher": None, "arch": "vit_small_patch16_224",
                "model_kwargs": {"depth": depth, "embed_dim": 16, "num_heads": 2, "img_size": 32}}, path)
    return path


def test_augmented_protocol_encodes_each_batch_once_for_every_classifier(synthetic_root, tmp_path, monkeypatch):
    """dinov2's 4 token groups x 3 lrs: the encoder runs once per training batch (shared by all 12 classifiers), plus
    the validation split once; the record names the protocol and its conditions."""
    calls = []
    real = linear_probe.probe_features
    monkeypatch.setattr(linear_probe, "probe_features", lambda b, images: calls.append(len(images)) or real(b, images))
    record = linear_probe.run(str(_tiny_vit_checkpoint(tmp_path / "vit.pth")), str(synthetic_root / "imagenet"),
                              str(tmp_path / "m.json"), recipe="dinov2", resolution=32, learning_rates=[0.01, 0.1],
                              epochs=2, batch_size=32, device="cpu", progress=False)
    assert (record["train_images"], record["val_images"]) == (80, 20)
    assert calls == [20] + [32, 32, 16] * 2  # validation once (cached), then 3 batches per epoch
    assert len(record["grid"]["val_top1"]) == 4 * 3 and record["grid"]["choices"] == [[4, True], [1, False], [1, True], [4, False]]
    assert record["grid"]["learning_rates"] == [0.001, 0.01, 0.1]
    cond = json.loads((tmp_path / "m.json").read_text())["conditions"]
    assert cond["protocol"] == record["protocol"] == "linear-dinov2"
    assert cond["augmentation"].startswith("RandomResizedCrop(32, scale 0.08-1, bicubic) + horizontal flip, fresh every epoch")
    assert cond["lr_grid"] == [0.001, 0.01, 0.1] and cond["epochs"] == 2 and cond["batch_size"] == 32
    assert cond["token_choices"] == [[4, True], [1, False], [1, True], [4, False]] and cond["selected_epoch"] == "last"
    assert cond["selection"] == "val" and "DINOv2" in cond["selection_rule"] and cond["pos_resample"] == "timm"
    assert cond["schedule"] == "cosine-iter" and cond["head"] == "linear"


def test_augmented_views_are_fresh_every_epoch_and_reproducible(synthetic_root):
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=1, embed_dim=16, num_heads=2,
                              img_size=32, dynamic_img_size=True).eval()
    train, _ = linear_probe._split_sources(synthetic_root / "imagenet")
    indices = list(range(0, len(train), 8))  # 10 images
    batches = linear_probe.augmented_batches(model, train, indices, RECIPES["dino-vits"], [(1, False)], 32, 16, "cpu", seed=3)

    def epoch(e):
        (x,), labels = next(iter(batches(e)))
        order = labels.argsort()
        return x[order], labels[order]

    first, again, second = epoch(0), epoch(0), epoch(1)
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=0)  # seeded: the same views
    assert torch.equal(first[1], second[1]) and (first[0] - second[0]).abs().max() > 1e-3  # other crops next epoch


def test_cached_and_augmented_protocols_are_named_apart_and_refuse_unknown_ones(synthetic_root, tmp_path):
    ckpt = str(_tiny_vit_checkpoint(tmp_path / "vit.pth", depth=1))
    common = dict(recipe="mocov3-vit", resolution=32, learning_rates=[0.1], epochs=1, batch_size=40, device="cpu",
                  progress=False)
    cached = linear_probe.run(ckpt, str(synthetic_root / "imagenet"), protocol="cached-centre-crop", **common)
    augmented = linear_probe.run(ckpt, str(synthetic_root / "imagenet"), **common)
    assert (cached["protocol"], augmented["protocol"]) == ("linear-cached-centre-crop", "linear-mocov3-vit")
    assert cached["conditions"]["val_transform"] == augmented["conditions"]["val_transform"] == (
        "resize short side 37 (bilinear), centre crop 32")
    with pytest.raises(UserFacingError, match="unknown linear-probe protocol 'cached'"):
        linear_probe.run(ckpt, str(synthetic_root / "imagenet"), protocol="cached", **common)


def test_the_published_lewel_row_states_the_schedule_the_probe_runs():
    """LEWEL's linear rows come from scripts/srun_lin.sh: 50 epochs, x0.1 at 30 and 40, lr 0.4, batch 256."""
    import re

    from bam_dense.bench.published import BENCHMARKS
    from bam_dense.bench.published import RECIPES as PUBLISHED

    bench = BENCHMARKS["imagenet_linear_r50"]
    source = PUBLISHED[bench.recipe].source
    lewel = RECIPES["lewel-r50"]
    assert "srun_lin.sh" in source and "100 epochs, x0.1" not in source
    assert re.search(r"lr ([\d.]+), batch (\d+), (\d+) epochs, x0\.1 at (\d+) and (\d+)", source).groups() == (
        str(lewel.lr), str(lewel.batch_size), str(lewel.epochs), *map(str, lewel.milestones))
