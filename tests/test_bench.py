"""Leaderboard plans and reports, the demo, and the docs' commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, REPO, tiny_pretrain_dict

from bam_dense.core.config import load_config
from bam_dense.engine.trainer import Trainer


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, method in (("bam", {}), ("lewel_bam", {"neck": {"layers": 2, "hidden_dim": 32, "out_dim": 16, "bn": True,
                                                                "bias": False, "act": "relu"}, "num_heads": 4})):
        root = tmp_path_factory.mktemp(name)
        cfg = tiny_pretrain_dict(root, method_name=name, run={"max_steps": 2})
        cfg["method"].update(method)
        Trainer(load_config(data=cfg)).train()
        out[name] = root / "checkpoints" / "last.pth"
    return out


def _plan(tmp_path: Path, checkpoints: dict, synthetic_root: Path, broken: bool = False) -> Path:
    plan = {
        "name": "two-methods",
        "runs": [{"name": "bam-s0", "method": "bam", "checkpoint": str(checkpoints["bam"])},
                 {"name": "lewel-bam-s0", "method": "lewel_bam", "checkpoint": str(checkpoints["lewel_bam"])}],
        "steps": [
            {"name": "probe", "kind": "probe", "benchmark": "synthetic_linear_probe",
             "ade_root": str(synthetic_root / "ade20k" / "ADEChallengeData2016"),
             "options": ["--image-size", "32", "--steps", "50"]},
            {"name": "davis", "kind": "davis", "benchmark": "synthetic_davis", "davis_root": str(synthetic_root / "davis"),
             "options": ["--resolution", "64", "--device", "cpu"]},
        ],
    }
    if broken:
        plan["steps"].insert(0, {"name": "seg", "kind": "seg", "benchmark": "ade20k_upernet_vitb16",
                                 "config": str(tmp_path / "no_such_config.py"), "data_root": str(tmp_path)})
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_a_plan_of_two_methods_gives_a_side_by_side_report(two_checkpoints, synthetic_root, tmp_path):
    plan = _plan(tmp_path, two_checkpoints, synthetic_root)
    run_dir = tmp_path / "run"
    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "bench", "run", str(plan), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for run in ("bam-s0", "lewel-bam-s0"):
        for step in ("probe", "davis"):
            metrics = json.loads((run_dir / run / step / "metrics.json").read_text())["metrics"]
            assert metrics
    again = subprocess.run([PYTHON, "-m", "bam_dense.cli", "bench", "run", str(plan), "--run-dir", str(run_dir)],
                           capture_output=True, text=True, env=_env())
    assert again.stdout.count("skipped") == 4  # finished steps are not re-run
    rep = subprocess.run([PYTHON, "-m", "bam_dense.cli", "bench", "report", str(run_dir)], capture_output=True, text=True, env=_env())
    assert rep.returncode == 0, rep.stderr
    report = (run_dir / "report.md").read_text()
    assert "Synthetic data checks the pipeline; it is not a benchmark" in report
    for text in ("bam-s0", "lewel-bam-s0", "Synthetic DAVIS layout", "linear per-patch probe"):
        assert text in report
    assert (run_dir / "synthetic_davis.png").exists()


def test_a_failing_step_keeps_the_other_results_and_says_why(two_checkpoints, synthetic_root, tmp_path):
    plan = _plan(tmp_path, {"bam": two_checkpoints["bam"], "lewel_bam": two_checkpoints["lewel_bam"]}, synthetic_root, broken=True)
    run_dir = tmp_path / "run"
    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "bench", "run", str(plan), "--run-dir", str(run_dir), "--steps", "seg",
                           "probe"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 1
    assert "2 step(s) failed" in proc.stderr
    error = (run_dir / "bam-s0" / "seg" / "error.txt").read_text()
    assert "no_such_config.py does not exist" in error
    assert (run_dir / "bam-s0" / "probe" / "metrics.json").exists()
    subprocess.run([PYTHON, "-m", "bam_dense.cli", "bench", "report", str(run_dir)], check=True, capture_output=True, env=_env())
    report = (run_dir / "report.md").read_text()
    assert "command failed with exit status" in report and "ADE20K, UperNet ViT-B/16" in report
    assert "| BAM (ViT-B/16) | 46.10 |" in report  # published numbers of the protocol, beside the failed run


def test_frozen_feature_steps_run_in_a_plan_and_its_dry_run(two_checkpoints, synthetic_root, tmp_path):
    """retrieval and linear steps: bad steps refused at load; real run and dry-run write the metric the report reads."""
    from bam_dense.bench.dryrun import run_plan_dry
    from bam_dense.bench.plan import load_plan, run_plan
    from bam_dense.bench.published import BENCHMARKS

    steps = [{"name": "hummingbird", "kind": "retrieval", "benchmark": "voc12_retrieval_vits16", "dataset": "voc",
              "data_root": str(synthetic_root / "voc"), "options": ["--input-size", "32", "--no-augment", "--memory-size", "0"]},
             {"name": "lincls", "kind": "linear", "benchmark": "imagenet_linear_r50", "data_root": str(synthetic_root / "imagenet"),
              "options": ["--recipe", "dino-vitb", "--resolution", "32", "--epochs", "2", "--lrs", "0.01"]}]
    path = tmp_path / "plan.yaml"
    for broken, message in (({"dataset": None}, "needs dataset"), ({"dataset": "coco"}, "'coco' is not one of voc, ade20k")):
        path.write_text(yaml.safe_dump({"runs": [{"name": "a", "checkpoint": "x.pth"}], "steps": [{**steps[0], **broken}]}))
        with pytest.raises(Exception, match=message):
            load_plan(path)
    path.write_text(yaml.safe_dump({"name": "frozen", "runs": [{"name": "bam", "checkpoint": str(two_checkpoints["bam"])}],
                                    "steps": steps}))
    plan = load_plan(path)
    outcomes = run_plan(plan, tmp_path / "run")
    assert [o.status for o in outcomes] == ["done", "done"], [o.detail for o in outcomes]
    dry = run_plan_dry(plan, tmp_path / "dry")
    assert [o.status for o in dry] == ["done", "done"], [o.detail for o in dry]
    for root in (tmp_path / "run", tmp_path / "dry"):
        for step in steps:
            metrics = json.loads((root / "bam" / step["name"] / "metrics.json").read_text())["metrics"]
            assert 0.0 <= metrics[BENCHMARKS[step["benchmark"]].metric] <= 100.0


def test_slurm_commands_are_printed_with_dependencies(tmp_path):
    plan = {"name": "cluster", "slurm": {"partition": "gpu", "gpus_per_node": 8, "nodes": 2},
            "runs": [{"name": "bam-vits", "pretrain": {"config": "configs/pretrain/bam_vit_small_16gpu.yaml"}}],
            "steps": [{"name": "davis", "kind": "davis", "benchmark": "davis17_val", "davis_root": "/data/DAVIS"},
                      {"name": "ade", "kind": "seg", "benchmark": "ade20k_upernet_vits16",
                       "config": "configs/mmseg/upernet_vit-s16_ade20k-512x512_160k.py", "data_root": "/data/ade", "nproc": 8}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "bench", "run", str(path), "--run-dir", str(tmp_path / "r"),
                           "--print-slurm"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    pre = next(line for line in lines if "PRE_BAM_VITS=$(sbatch" in line)
    assert "--nodes=2" in pre and "pretrain/slurm.sh" in pre and "--partition=gpu" in pre
    jobs = [line for line in lines if line.startswith("sbatch --dependency=afterok:$PRE_BAM_VITS")]
    assert len(jobs) == 2 and "davis propagate" in jobs[0] and "seg train" in jobs[1]


def test_reduced_demo_writes_a_report_with_every_section(tmp_path):
    from bam_dense.bench.stats import VERDICTS

    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "demo", "--reduced", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=_env(), timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for section in ("Synthetic data checks the pipeline; it is not a benchmark", "## Summary table (pretrained vs random init)",
                    "## Verdicts in words", "## Pretraining", "## BAM attention and its balanced target", "## Conversion coverage",
                    "## DAVIS overlays", "## Steps"):
        assert section in report, section
    for fig in re.findall(r"\(figures/([^)]+)\)", report):
        assert (tmp_path / "figures" / fig).stat().st_size > 0
    assert "figures/comparison.png" in report and "Sinkhorn" in report.split("## BAM attention")[1]
    assert "davis_" in report and "(100.0%)" in report
    assert "failed" not in report.split("## Steps")[1]
    # every task row: both values and their difference with a spread, a verdict; all in percent
    rows = {r["task"]: r for r in json.loads((tmp_path / "comparison.json").read_text())["rows"]}
    assert list(rows) == ["knn", "probe", "davis", "seg_ade20k", "det_coco"]
    table = report.split("```")[1]
    assert "pretrained BAM (%)" in table and "random init (%)" in table and "difference (points)" in table
    for task, row in rows.items():
        assert row["unit"] == "%" and row["verdict"] in VERDICTS, row
        for key in ("pretrained", "random_init", "difference"):
            iv = row[key]
            assert iv["low"] - 1e-6 <= iv["value"] <= iv["high"] + 1e-6, (task, key, iv)
        for key in ("pretrained", "random_init"):
            assert 0.0 <= row[key]["value"] <= 100.0
        assert row["title"] in table and row["verdict"] in table.split(row["title"])[1].splitlines()[0]
        assert bool(row["note"]) == (row["verdict"] != VERDICTS[0])  # a reason in words wherever there is no gain
        if task in ("seg_ade20k", "det_coco") and row["note"]:  # the fine-tune's own loss curve, from its logs
            assert "the training loss went" in row["note"] and len(row["training"]["bam_tiny"]) == 2, row["note"]
    # both encoders' fine-tunes ran with the same mmengine seed (a paired comparison: same decoder init, data order)
    for step in ("seg_ade20k", "det_coco"):
        for run in ("bam_tiny", "random_init"):
            logs = "".join(p.read_text() for p in (tmp_path / "runs" / run / step).glob("*/*.log"))
            assert re.search(r"^\s+seed: 0$", logs, re.M), (run, step)
    # the leaderboard report shows the same numbers in the same unit (percent), with their intervals
    from bam_dense.bench.published import BENCHMARKS

    leaderboard = (tmp_path / "runs" / "report.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in leaderboard.split("\n## ")}
    for task, bench, tol in (("probe", "synthetic_linear_probe", 0.01), ("davis", "synthetic_davis", 0.01),
                             ("seg_ade20k", "synthetic_seg", 0.015), ("det_coco", "synthetic_det", 0.06)):
        section = sections[BENCHMARKS[bench].title]
        for run, key in (("bam_tiny", "pretrained"), ("random_init", "random_init")):
            cells = next(x for x in section.splitlines() if x.startswith(f"| {run} |")).split("|")
            assert abs(float(cells[3]) - rows[task][key]["value"]) <= tol, (task, run, cells)
            assert cells[4].strip().startswith("["), cells
    assert "value (%)" in leaderboard and "(%)" in leaderboard


def test_fine_tune_rows_say_how_far_training_got_from_the_logs(tmp_path):
    from bam_dense.demo import _add_training_state, finetune_losses

    def log(run: str, losses: list[float]) -> None:
        path = tmp_path / run / "seg_ade20k" / "20261202_000000" / "vis_data" / "scalars.json"
        path.parent.mkdir(parents=True)
        lines = [json.dumps({"lr": 0.01, "loss": v, "iter": 20 * (i + 1), "step": 20 * (i + 1)}) for i, v in enumerate(losses)]
        path.write_text("\n".join(lines + [json.dumps({"mIoU": 2.5, "step": 80})]) + "\n")  # a test-time entry, no loss

    log("bam_tiny", [6.0, 5.0, 4.5, 4.0])
    log("random_init", [6.2, 5.1, 4.4, 4.1])
    assert finetune_losses(tmp_path / "bam_tiny" / "seg_ade20k") == [(20, 6.0), (40, 5.0), (60, 4.5), (80, 4.0)]
    iv = {"value": 2.5, "low": 1.8, "high": 3.1}
    rows = [{"task": "probe", "pretrained": {"value": 25.4}, "random_init": {"value": 21.6}, "note": ""},
            {"task": "seg_ade20k", "pretrained": iv, "random_init": iv, "note": "the difference is smaller than the spread"}]
    _add_training_state(rows, tmp_path)
    note = rows[1]["note"]
    assert "6.00 -> 4.00 (pretrained) and 6.20 -> 4.10 (random init) between iterations 20 and 80" in note
    assert "still falling at the last one for both" in note and "reaches 25.4% (pretrained) and 21.6% (random init)" in note
    assert "fine-tune seeds" in note  # the seed study's conclusion, on the segmentation row only
    log("bam_tiny_flat", [6.0, 4.0, 4.0, 4.1])  # not falling at the end: no such claim
    (tmp_path / "bam_tiny").rename(tmp_path / "old")
    (tmp_path / "bam_tiny_flat").rename(tmp_path / "bam_tiny")
    rows[1]["note"] = "x"
    _add_training_state(rows, tmp_path)
    assert "still falling" not in rows[1]["note"] and "6.00 -> 4.10" in rows[1]["note"]


DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _doc_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for doc in DOC_FILES:
        text = doc.read_text()
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.strip()
                if line.startswith("bam-dense "):
                    argv = shlex.split(line, comments=True)[1:]
                    for stop in (">", "|", "&&"):  # shell redirections and pipes are not the command's arguments
                        if stop in argv:
                            argv = argv[: argv.index(stop)]
                    commands.append((doc.name, argv))
    return commands


def test_every_bam_dense_command_in_the_docs_parses_with_the_current_cli():
    from bam_dense.cli import build_parser

    commands = _doc_commands()
    assert len(commands) >= 15, "the docs should show the commands for every task"
    parser = build_parser()
    for doc, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"{doc}: `bam-dense {shlex.join(argv)}` does not parse (exit {err.code})")
