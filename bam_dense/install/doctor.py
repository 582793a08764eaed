"""``bam-dense doctor``: versions, and for each feature whether it can run here and what fixes it."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import shutil
from dataclasses import dataclass, field


@dataclass
class Feature:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Report:
    versions: dict[str, str | None] = field(default_factory=dict)
    hardware: dict[str, object] = field(default_factory=dict)
    features: list[Feature] = field(default_factory=list)

    @property
    def core_ok(self) -> bool:
        return all(f.ok for f in self.features if f.name in ("pretraining", "converters", "DAVIS"))


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _try_import(module: str) -> tuple[bool, str]:
    try:
        importlib.import_module(module)
        return True, ""
    except Exception as err:  # any import failure is a finding, not a crash
        return False, f"{type(err).__name__}: {err}".splitlines()[0][:200]


def collect() -> Report:
    report = Report()
    report.versions["python"] = platform.python_version()
    for dist in (
        "bam-dense", "torch", "torchvision", "timm", "numpy", "opencv-python-headless", "scikit-image", "faiss-cpu",
        "mmengine", "mmcv", "mmsegmentation", "mmdet", "detectron2", "pycocotools",
    ):
        report.versions[dist] = _version(dist)

    torch_ok, torch_err = _try_import("torch")
    if torch_ok:
        import torch

        report.hardware["cuda_build"] = torch.version.cuda
        report.hardware["cuda_available"] = torch.cuda.is_available()
        report.hardware["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        report.hardware["nvcc"] = shutil.which("nvcc")
        report.hardware["distributed_backends"] = [
            b for b, ok in (("gloo", torch.distributed.is_gloo_available()), ("nccl", torch.distributed.is_nccl_available())) if ok
        ]

    install_core = "make install   (or: pip install -c constraints/ci.txt -e '.[dev]')"
    install_mm = "bam-dense install-openmmlab"

    core_mods = ["torch", "torchvision", "timm", "yaml", "safetensors", "tensorboard", "PIL", "cv2", "skimage"]
    missing = [m for m in core_mods if not _try_import(m)[0]]
    report.features.append(
        Feature("pretraining", not missing, "torch, timm, torchvision" + (f"; missing {missing}" if missing else ""), "" if not missing else install_core)
    )
    conv_missing = [m for m in ("torch", "timm", "safetensors") if not _try_import(m)[0]]
    report.features.append(
        Feature("converters", not conv_missing, "timm / torchvision / mmseg / mmdet / detectron2 / safetensors targets",
                "" if not conv_missing else install_core)
    )
    davis_missing = [m for m in ("torch", "cv2", "skimage", "PIL") if not _try_import(m)[0]]
    report.features.append(
        Feature("DAVIS", not davis_missing, "propagation and J&F evaluation" + (f"; missing {davis_missing}" if davis_missing else ""),
                "" if not davis_missing else install_core)
    )

    mmcv_ver = report.versions["mmcv"]
    if mmcv_ver is None:
        ops_ok, ops_detail = False, "mmcv not installed"
    else:
        from bam_dense.install.openmmlab import mmcv_ops_work

        ops_ok, ops_detail = mmcv_ops_work()
        ops_detail = f"mmcv {mmcv_ver}: compiled ops {'work' if ops_ok else 'FAIL: ' + ops_detail}"
    report.hardware["mmcv_ops"] = ops_ok

    seg_ok, seg_err = _try_import("mmseg")
    seg_good = ops_ok and seg_ok and mmcv_ver == "2.1.0"
    report.features.append(
        Feature("segmentation", seg_good, ops_detail + ("" if seg_ok else f"; mmseg: {seg_err}"), "" if seg_good else install_mm)
    )
    det_ok, det_err = _try_import("mmdet")
    coco_ok, _ = _try_import("pycocotools")
    det_good = ops_ok and det_ok and coco_ok and mmcv_ver == "2.1.0"
    report.features.append(
        Feature("detection", det_good, ops_detail + ("" if det_ok else f"; mmdet: {det_err}") + ("" if coco_ok else "; pycocotools missing"),
                "" if det_good else install_mm)
    )
    d2_ok, d2_err = _try_import("detectron2")
    report.features.append(
        Feature(
            "detectron2",
            d2_ok,
            "detectron2 importable" if d2_ok else "detectron2 is not installed (it is not on the package index)",
            "" if d2_ok else "not on the package index: build it from source following INSTALL.md of "
            "https://github.com/facebookresearch/detectron2 (needed only for the detectron2 path)",
        )
    )
    if not torch_ok:
        report.features[0].detail = f"torch: {torch_err}"
    return report


def render(report: Report) -> str:
    lines = ["bam-dense doctor", "", "versions:"]
    for name, ver in report.versions.items():
        lines.append(f"  {name:<24} {ver or '-'}")
    lines += ["", "hardware:"]
    for name, val in report.hardware.items():
        lines.append(f"  {name:<24} {val}")
    lines += ["", "features:"]
    for f in report.features:
        mark = "ok  " if f.ok else "MISSING"
        lines.append(f"  [{mark}] {f.name:<13} {f.detail}")
        if f.fix:
            lines.append(f"            fix: {f.fix}")
    return "\n".join(lines)
