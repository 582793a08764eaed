"""``benchmarks/step_time.py`` (bam-dense's step beside the official loops): its summary and its refusal without checkouts.

The timing itself needs the official repositories and is a benchmark (docs/benchmarks.md), not a test.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_time.py"


def _module():
    spec = importlib.util.spec_from_file_location("step_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_is_the_median_ratio_of_paired_turns_with_its_spread():
    times = {"official": [2.0, 3.0, 4.0, 10.0], "project": [1.0, 2.0, 4.0, 5.0]}  # ratios 2, 1.5, 1, 2
    s = _module().summary(times, steps=2)
    assert s["ratios"] == [2.0, 1.5, 1.0, 2.0]
    assert s["ratio_median"] == pytest.approx(1.75)
    assert s["ratio_iqr"] == pytest.approx([1.375, 2.0])
    assert 1.0 <= s["ratio_ci95"][0] <= 1.75 <= s["ratio_ci95"][1] <= 2.0
    assert s["official_s_per_step"] == pytest.approx(3.5 / 2) and s["project_s_per_step"] == pytest.approx(3.0 / 2)


def test_a_missing_checkout_is_refused_with_its_name(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--official", str(tmp_path), "--methods", "dino"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"{tmp_path / 'dino'} is not a folder" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--methods", "mocov3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--official DIR with a moco-v3/ folder" in proc.stderr
