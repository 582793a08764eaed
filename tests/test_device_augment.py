"""``data.augment_on: device``: each device op against its PIL counterpart, parameter draws against the PIL path's,
a tiny pretraining run against the worker path (the resume test is parametrised in test_engine.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_pretrain_dict
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as F

from bam_dense.core.config import ConfigError, ViewsConfig, load_config
from bam_dense.data import device_augment as D
from bam_dense.data import pretrain
from bam_dense.data.pretrain import Views


def smooth_image(h: int, w: int, seed: int) -> Image.Image:
    """A photo-like test image: a bicubic-upsampled colour field plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((max(h // 16, 2), max(w // 16, 2), 3)) * 255).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float64)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float()


@pytest.fixture(scope="module")
def img() -> Image.Image:
    return smooth_image(48, 64, seed=0)


# ---------------------------------------------------------------------------- per-op equivalence (bitwise)
@pytest.mark.parametrize("factor", [0.6, 0.93, 1.0, 1.37])
def test_brightness_contrast_saturation_equal_pil_bitwise(img, factor):
    x = as_tensor(img)
    alpha = torch.tensor([factor])
    assert torch.equal(D.blend(torch.zeros_like(x[:, :1]), x, alpha), as_tensor(F.adjust_brightness(img, factor)))
    assert torch.equal(D.blend(D.contrast_mean(x), x, alpha), as_tensor(F.adjust_contrast(img, factor)))
    assert torch.equal(D.blend(D.luma(x), x, alpha), as_tensor(F.adjust_saturation(img, factor)))


@pytest.mark.parametrize("hue", [-0.1, -0.037, 0.0, 0.05, 0.1, 0.5])
def test_hue_equals_pil_bitwise(img, hue):
    assert torch.equal(D.adjust_hue(as_tensor(img), torch.tensor([hue])), as_tensor(F.adjust_hue(img, hue)))


def test_grayscale_and_solarize_equal_pil_bitwise(img):
    x = as_tensor(img)
    assert torch.equal(D.luma(x).expand_as(x), as_tensor(F.rgb_to_grayscale(img, num_output_channels=3)))
    cfg = ViewsConfig(global_crops=1, global_blur_prob=[0.0], global_solarize_prob=[1.0], local_crops=0, color_jitter_prob=0.0,
                      grayscale_prob=0.0, flip_prob=0.0, global_size=64, global_scale=[1.0, 1.0])
    aug = D.DeviceAugment(cfg)
    params = torch.zeros(1, D.N_PARAMS, dtype=torch.float64)
    params[0, D.H] = params[0, D.BOX_H] = 64
    params[0, D.W] = params[0, D.BOX_W] = 64
    params[0, D.SOLAR], params[0, D.THRESH] = 1, 128
    square = smooth_image(64, 64, seed=1)
    out = aug.apply(torch.from_numpy(np.array(square))[None], params, 64)
    expected = T.Compose([T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])(F.solarize(square, 128))
    assert torch.equal(out[0], expected)  # solarize, ToTensor and Normalize, all bitwise


@pytest.mark.parametrize("radius", [0.1, 0.5, 1.0, 1.7, 2.0])
def test_gaussian_blur_equals_pil_bitwise(img, radius):
    ri, ww, fw = D.pil_blur_box(radius)
    out = D.box_blur(as_tensor(img), torch.tensor([ri]), torch.tensor([ww]), torch.tensor([fw]))
    assert torch.equal(out, as_tensor(img.filter(ImageFilter.GaussianBlur(radius))))


def test_ops_take_per_sample_parameters(img):
    """A batch of two with different parameters equals the two samples done one by one."""
    other = smooth_image(48, 64, seed=5)
    x = torch.cat([as_tensor(img), as_tensor(other)])
    radii = [D.pil_blur_box(r) for r in (0.3, 1.9)]
    r, ww, fw = (torch.tensor(v) for v in zip(*radii))
    both = D.box_blur(x, r, ww, fw)
    assert torch.equal(both[1:], as_tensor(other.filter(ImageFilter.GaussianBlur(1.9))))
    assert torch.equal(D.adjust_hue(x, torch.tensor([0.1, -0.1]))[1:], as_tensor(F.adjust_hue(other, -0.1)))


# ---------------------------------------------------------------------------- resize
def _resize(img: Image.Image, out: int, interpolation: str, dtype=torch.float64, box=None, crop=None) -> torch.Tensor:
    params = torch.zeros(1, D.N_PARAMS, dtype=torch.float64)
    params[0, D.H], params[0, D.W] = img.height, img.width
    params[0, D.BOX_H], params[0, D.BOX_W] = box or (img.height, img.width)
    params[0, D.CROP_H], params[0, D.CROP_W] = crop or (img.height, img.width)
    padded = torch.full((1, img.height + 3, img.width + 5, 3), 255, dtype=torch.uint8)  # padding must not matter
    padded[0, :img.height, :img.width] = torch.from_numpy(np.array(img))
    return D.resize(padded, params, out, interpolation, dtype)


def test_resize_equals_pil_bitwise_in_both_pass_orders():
    rng = np.random.default_rng(0)
    orders = set()
    for k in range(14):
        out = int(rng.choice([32, 96, 224]))
        h, w = (int(v) for v in rng.integers(out // 2, 3 * out, 2))
        img = smooth_image(h, w, seed=k)
        params = torch.tensor([[0.0] * D.N_PARAMS])
        params[0, D.CROP_H], params[0, D.CROP_W] = h, w
        orders.add(bool(D.vertical_first(params, out)))
        for interpolation, mode in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
            exact = _resize(img, out, interpolation)
            assert torch.equal(exact, as_tensor(img.resize((out, out), mode)).double()), (h, w, out, interpolation)
            fast = _resize(img, out, interpolation, torch.float32).double()  # the CUDA default
            assert (fast - exact).abs().max() <= 2 and (fast != exact).double().mean() < 0.05
    assert orders == {True, False}


def test_reduced_crops_stay_close_to_the_direct_pil_resize():
    """A box over REDUCE_GAP x the output is box-reduced in the worker; bound what that changes."""
    rng = np.random.default_rng(1)
    for k in range(6):
        h, w = (int(v) for v in rng.integers(300, 700, 2))
        img = smooth_image(h, w, seed=100 + k)
        fy, fx = int(np.ceil(h / (D.REDUCE_GAP * 96))), int(np.ceil(w / (D.REDUCE_GAP * 96)))
        reduced = img.reduce((fx, fy))
        out = _resize(reduced, 96, "bicubic", box=(float(np.float32(h / fy)), float(np.float32(w / fx))), crop=(h, w))
        diff = (out - as_tensor(img.resize((96, 96), Image.BICUBIC)).double()).abs()
        assert diff.max() <= 4 and diff.mean() <= 0.75  # measured: max 3, mean <= 0.52


# ---------------------------------------------------------------------------- parameters: drawn as the PIL path draws them
def _record_pil_draws(monkeypatch) -> list:
    """Patch the PIL path's random decisions to log (event, value) in order."""
    log = []
    rrc, cj = T.RandomResizedCrop.get_params, T.ColorJitter.get_params

    def rrc_params(img, scale, ratio):
        out = rrc(img, scale, ratio)
        log.append(("crop", tuple(out)))
        return out

    def cj_params(*args):
        fn_idx, b, c, s, h = cj(*args)
        log.append(("jitter", (tuple(fn_idx.tolist()), b, c, s, h)))
        return fn_idx, b, c, s, h

    def record(name, fn):
        def wrapped(img, *args, **kwargs):
            log.append((name, args[0] if name == "solarize" else True))
            return fn(img, *args, **kwargs)
        return wrapped

    class Blur(ImageFilter.GaussianBlur):
        def __init__(self, radius):
            log.append(("blur", D.pil_blur_box(radius)))
            super().__init__(radius)

    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(rrc_params))
    monkeypatch.setattr(T.ColorJitter, "get_params", staticmethod(cj_params))
    monkeypatch.setattr(F, "hflip", record("flip", F.hflip))
    monkeypatch.setattr(F, "rgb_to_grayscale", record("gray", F.rgb_to_grayscale))
    monkeypatch.setattr(F, "solarize", record("solarize", F.solarize))
    monkeypatch.setattr(pretrain.ImageFilter, "GaussianBlur", Blur)
    return log


def _events_from_params(crops, boxes) -> list:
    log = []
    for (_, p), box in zip(crops, boxes):
        p = p.tolist()
        log.append(("crop", box))
        if p[D.FLIP]:
            log.append(("flip", True))
        if p[D.JITTER]:
            factors = tuple(None if np.isnan(p[c]) else p[c] for c in (D.BRIGHT, D.CONTRAST, D.SATUR, D.HUE))
            log.append(("jitter", (tuple(int(v) for v in p[D.ORDER:D.ORDER + 4]), *factors)))
        if p[D.GRAY]:
            log.append(("gray", True))
        if p[D.BLUR]:
            log.append(("blur", (int(p[D.BLUR_R]), int(p[D.BLUR_WW]), int(p[D.BLUR_FW]))))
        if p[D.SOLAR]:
            log.append(("solarize", int(p[D.THRESH])))
    return log


def test_parameters_and_rng_consumption_equal_the_pil_path(monkeypatch):
    cfg = ViewsConfig(global_size=32, local_size=16, global_blur_prob=[0.5, 0.5], global_solarize_prob=[0.5, 0.5],
                      local_blur_prob=0.5, grayscale_prob=0.5, color_jitter_prob=0.5, color_jitter=[0.4, 0.4, 0.2, 0.1])
    img = smooth_image(60, 80, seed=2)
    device_views = D.DeviceViews(cfg)
    draws = []
    monkeypatch.setattr(T.RandomResizedCrop, "get_params",
                        staticmethod(lambda im, s, r, f=T.RandomResizedCrop.get_params: draws.append(f(im, s, r)) or draws[-1]))
    device_side, states = [], []
    for seed in range(25):
        draws.clear()
        torch.manual_seed(seed)
        crops = device_views(img)
        device_side.append(_events_from_params(crops, [tuple(d) for d in draws]))
        states.append(torch.get_rng_state())
    monkeypatch.undo()
    log = _record_pil_draws(monkeypatch)
    pil_views = Views(cfg)
    kinds = set()
    for seed in range(25):
        log.clear()
        torch.manual_seed(seed)
        pil_views(img)
        assert log == device_side[seed], f"seed {seed}"
        assert torch.equal(torch.get_rng_state(), states[seed]), "the two paths consumed different amounts of randomness"
        kinds |= {name for name, _ in log}
    assert kinds == {"crop", "flip", "jitter", "gray", "blur", "solarize"}  # every branch was exercised


def test_device_path_reproduces_the_pil_views_bitwise():
    """End to end on the BAM recipe's views (2 x 224 + 6 x 96): on the CPU, crops that needed no reduction are
    bitwise equal to the PIL path's tensors."""
    cfg = load_config(data={}).data.views
    image = smooth_image(200, 300, seed=4)  # no box exceeds REDUCE_GAP x its output: nothing is reduced
    pil_views, device_views, aug = Views(cfg), D.DeviceViews(cfg), D.DeviceAugment(cfg)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = pil_views(image)
        torch.manual_seed(seed)
        crops, _, _ = D.collate_device([(device_views(image), 0, 0)])
        out = aug(crops)
        assert [o.shape[-1] for o in out] == [224, 224] + [96] * 6
        for v, (got, want) in enumerate(zip(out, expected)):
            assert torch.equal(got[0], want), f"seed {seed}, crop {v}"


def test_float32_resize_as_on_cuda_stays_close_to_float64(img):
    """CUDA's default (float32 resize) end to end, against the CPU default (float64, Pillow's integer arithmetic)."""
    cfg = ViewsConfig(global_size=64, local_size=32)
    views = D.DeviceViews(cfg)
    samples = []
    for seed in range(4):
        torch.manual_seed(seed)
        samples.append((views(smooth_image(120, 160, seed=seed)), 0, 0))
    crops, _, _ = D.collate_device(samples)
    exact, fast = D.DeviceAugment(cfg)(crops), D.DeviceAugment(cfg, resize_dtype=torch.float32)(crops)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255
    levels = torch.cat([((a - b) * std).abs().round().flatten() for a, b in zip(exact, fast)])
    assert levels.mean() < 0.2 and (levels > 0).float().mean() < 0.05


def test_augment_on_rejects_an_unknown_value_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.augment_on: 'gpu' is not one of worker, device"):
        load_config(data=tiny_pretrain_dict(tmp_path, data={"augment_on": "gpu"}))


# ---------------------------------------------------------------------------- tiny pretraining run
def test_tiny_pretraining_with_device_augmentation_matches_the_worker_path_knn(tmp_path):
    from bam_dense.engine.trainer import Trainer

    def run(mode: str, seed: int):
        out = tmp_path / f"{mode}{seed}"
        cfg = tiny_pretrain_dict(out, data={"augment_on": mode}, run={"seed": seed},
                                 optim={"epochs": 2, "warmup_epochs": 1},
                                 eval={"knn": {"enabled": True, "every_epochs": 2, "k": 5, "image_size": 16,
                                               "resize_size": 16, "batch_size": 64}})
        summary = Trainer(load_config(data=cfg)).train()
        assert summary.steps == 8 and np.isfinite(summary.last_loss)
        return summary.knn[-1]["knn_top1"], torch.load(out / "checkpoints" / "last.pth", weights_only=True)["student"]

    worker = [run("worker", seed) for seed in (0, 1, 2)]
    device, device_weights = run("device", 0)
    knn = [acc for acc, _ in worker]
    print(f"k-NN top-1: worker {knn}, device {device}")
    spread = max(knn) - min(knn)
    assert min(knn) - spread - 0.05 <= device <= max(knn) + spread + 0.05, (device, knn)
    # No box of these 32-px images needs reducing, so on the CPU the crops, hence the run, are the worker path's.
    assert all(torch.equal(tensor, worker[0][1][name]) for name, tensor in device_weights.items())
