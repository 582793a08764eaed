"""``benchmarks/gpu_check.py --cpu-smoke``: every section of the first-GPU check runs, on a stock machine's modules.

The smoke run is the GPU run's code at toy sizes on the CPU (see the script's docstring). It runs here in a
subprocess in which the modules a stock CUDA PyTorch machine lacks (OpenMMLab, OpenCV, SciPy, scikit-image,
faiss) cannot be imported (``sys.modules[name] = None``), so that an import of any of them on the script's path
fails the run; the JSON's list of imported modules is checked as well.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
BLOCKED = ("mmcv", "mmengine", "mmseg", "mmdet", "cv2", "scipy", "skimage", "faiss")
SECTIONS = {"amp", "throughput_vit_small_eager", "throughput_vit_base_eager", "augment", "jpeg", "davis",
            "throughput_vit_small_compile", "throughput_vit_base_compile"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "smoke.json"
    code = (f"import runpy, sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
            f"sys.argv = [{str(SCRIPT)!r}, '--cpu-smoke', '--out', {str(out)!r}]\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_cpu_smoke_measures_every_section(smoke):
    proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["mode"] == "cpu-smoke"
    assert set(report["sections"]) == SECTIONS
    for name, entry in report["sections"].items():
        assert entry["status"] == "ok", f"{name}: {entry.get('error')}"
        numbers = {k: v for k, v in entry["results"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers, name
        assert all(math.isfinite(v) for v in numbers.values()), f"{name}: {numbers}"
        assert f"{name:<30}" in proc.stdout  # the printed table has the section
    amp = report["sections"]["amp"]["results"]
    assert amp["loss_rel_diff"] < 0.05 and amp["grad_cosine"] > 0.9  # bf16 agrees with float32 on the toy model
    for name in ("throughput_vit_small_eager", "throughput_vit_small_compile"):
        r = report["sections"][name]["results"]
        assert r["images_per_s"] > 0 and r["gflop_per_image"] > 0 and r["mfu"] == pytest.approx(
            r["gflop_per_image"] * r["images_per_s"] / 1e3 / r["peak_tflops"])
    assert report["sections"]["throughput_vit_base_eager"]["results"]["grad_checkpointing"] is True  # the recipe's


def test_cpu_smoke_imports_nothing_a_stock_cuda_machine_lacks(smoke):
    proc, report = smoke
    assert report is not None, proc.stderr[-3000:]
    loaded = set(report["modules"])
    assert {"torch", "torchvision", "timm", "numpy"} <= loaded
    assert not loaded & set(BLOCKED), loaded & set(BLOCKED)
