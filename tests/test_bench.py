"""Leaderboard plans and reports, the demo, and the docs' commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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
    from bam_dense.bench.plan import load_plan, run_plan
    from bam_dense.bench.plan_dry_run import run_plan_dry
    from bam_dense.bench.published import BENCHMARKS

    steps = [{"name": "hummingbird", "kind": "retrieval", "benchmark": "synthetic_retrieval", "dataset": "voc",
              "data_root": str(synthetic_root / "voc"), "options": ["--input-size", "32", "--no-augment", "--memory-size", "0"]},
             {"name": "lincls", "kind": "linear", "benchmark": "synthetic_linear", "data_root": str(synthetic_root / "imagenet"),
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


def _print_slurm(plan: dict, tmp_path: Path) -> list[str]:
    """The lines ``bench run PLAN --print-slurm`` prints for ``plan`` (run dir ``tmp_path/r``)."""
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "bench", "run", str(path), "--run-dir", str(tmp_path / "r"),
                           "--print-slurm"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_slurm_commands_are_printed_with_dependencies(tmp_path):
    plan = {"name": "cluster", "slurm": {"partition": "gpu", "gpus_per_node": 8, "nodes": 2},
            "runs": [{"name": "bam-vits", "pretrain": {"config": "configs/pretrain/bam_vit_small_16gpu.yaml"}}],
            "steps": [{"name": "davis", "kind": "davis", "benchmark": "davis17_val", "davis_root": "/data/DAVIS"},
                      {"name": "ade", "kind": "seg", "benchmark": "ade20k_upernet_vits16",
                       "config": "configs/mmseg/upernet_vit-s16_ade20k-512x512_160k.py", "data_root": "/data/ade", "nproc": 8}]}
    lines = _print_slurm(plan, tmp_path)
    pre = next(line for line in lines if "PRE_BAM_VITS=$(sbatch" in line)
    assert "--nodes=2" in pre and "pretrain/slurm.sh" in pre and "--partition=gpu" in pre
    jobs = [line for line in lines if line.startswith("sbatch --dependency=afterok:$PRE_BAM_VITS")]
    assert len(jobs) == 2 and "davis propagate" in jobs[0] and "seg train" in jobs[1]


def test_the_printed_pretraining_job_reaches_train_py_from_slurms_spool_copy(tmp_path):
    """sbatch runs a copy of slurm.sh from its spool folder: the job must still find the checkout's train.py and
    .venv (through scontrol's Command=) and hand train.py the config and overrides the plan printed."""
    plan = {"name": "cluster", "slurm": {"gpus_per_node": 8},
            "runs": [{"name": "bam-vits", "pretrain": {"config": "configs/pretrain/bam_vit_small_16gpu.yaml"}}],
            "steps": [{"name": "davis", "kind": "davis", "benchmark": "davis17_val", "davis_root": "/data/DAVIS"}]}
    sbatch = next(line for line in _print_slurm(plan, tmp_path) if "PRE_BAM_VITS=$(sbatch" in line)
    words = shlex.split(sbatch.split("$(", 1)[1].rstrip(")"))
    script = next(i for i, w in enumerate(words) if w.endswith("pretrain/slurm.sh"))
    assert Path(words[script]) == REPO / "pretrain" / "slurm.sh"
    job_args = words[script + 1:]

    spool = tmp_path / "spool"  # what slurmd runs: a copy of the script, away from the checkout
    spool.mkdir()
    (spool / "slurm_script").write_text((REPO / "pretrain" / "slurm.sh").read_text())
    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "srun.args"
    (fake / "scontrol").write_text(f"#!/bin/sh\ncase \"$1 $2\" in\n  'show job') echo '   Command={words[script]} x';;\n"
                                   "  'show hostnames') echo node1;;\nesac\n")
    (fake / "srun").write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {record}\n')
    for tool in ("scontrol", "srun"):
        (fake / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update(PATH=f"{fake}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node1")
    job = subprocess.run(["bash", str(spool / "slurm_script"), *job_args], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    ran = record.read_text().splitlines()
    python = REPO / ".venv" / "bin" / "python"  # slurm.sh's choice: the checkout's venv, else python3 on PATH
    python = str(python) if python.exists() else shutil.which("python3", path=env["PATH"])
    assert ran[:3] == ["--kill-on-bad-exit=1", python, str(REPO / "pretrain" / "train.py")]
    assert ran[3:] == ["--config", *job_args]
    assert job_args[0] == str(REPO / "configs" / "pretrain" / "bam_vit_small_16gpu.yaml")
    assert f"run.output_dir={tmp_path / 'r' / 'bam-vits' / 'pretrain'}" in job_args


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


# ---------------------------------------------------------------------------------------------
# Conditions recorded from what ran (issue 27 section 1); what produced each result (issue 28 section 1)
# ---------------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _real_layout_davis(synthetic_root: Path, tmp_path: Path) -> Path:
    """The synthetic DAVIS sequences without their synthetic mark: data in the real layout, as a user's copy."""
    import shutil

    root = tmp_path / "DAVIS"
    shutil.copytree(synthetic_root / "davis", root)
    (root / "SYNTHETIC.txt").unlink()
    return root


def test_a_davis_step_at_another_resolution_is_filed_under_its_own_conditions(two_checkpoints, synthetic_root, tmp_path):
    from bam_dense.bench.plan import load_plan, run_plan
    from bam_dense.bench.report import write_report

    davis = _real_layout_davis(synthetic_root, tmp_path)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"name": "davis-128", "runs": [{"name": "bam", "checkpoint": str(two_checkpoints["bam"]),
                                                                   "data": "ImageNet-1k", "epochs": 800}],
                                    "steps": [{"name": "davis", "kind": "davis", "benchmark": "davis17_val",
                                               "davis_root": str(davis), "options": ["--resolution", "128", "--device", "cpu"]}]}))
    run_dir = tmp_path / "run"
    outcomes = run_plan(load_plan(path), run_dir, plan_file=path)
    assert [o.status for o in outcomes] == ["done"], outcomes
    recorded = json.loads((run_dir / "bam" / "davis" / "metrics.json").read_text())["conditions"]
    assert recorded["resolution"] == "short side 128" and recorded["dataset"] == "DAVIS-2017"
    assert recorded["propagation"] == "top-5, temperature 0.1, first + 7 previous frames, radius 12"
    propagation = json.loads((run_dir / "bam" / "davis" / "results" / "propagation.json").read_text())
    assert recorded["patch"] == propagation["patch_size"] == 4  # the tiny ViT's, from the checkpoint that ran
    assert recorded["arch"] == "ViT-S" and recorded["registers"] == 0 and recorded["pretrain_epochs"] == 800
    report = write_report([run_dir], run_dir).read_text()
    assert "# Protocol: propagation, DAVIS-2017, input short side 128" in report
    assert "## DAVIS-2017 val, label propagation (J&F-Mean) (short side 128)" in report
    assert "short side 480" not in report.split("# Protocol:")[1].split("\n")[0]
    assert "**same protocol**" not in report
    dino = next(line for line in report.splitlines() if line.startswith("| DINO ViT-S/16 |"))
    assert "input resolution short side 480 (published) vs short side 128 (bam)" in dino
    assert (run_dir / "davis17_val_short-side-128.png").stat().st_size > 0


def test_a_wrong_filing_is_refused_at_plan_check_with_the_reason(synthetic_root, tmp_path):
    from bam_dense.bench.plan import load_plan, run_plan
    from bam_dense.core.errors import UserFacingError

    davis = _real_layout_davis(synthetic_root, tmp_path)
    cases = [
        ({"name": "d", "kind": "probe", "benchmark": "davis17_val", "davis_root": str(davis)},
         "step d (probe) is filed under davis17_val, which davis steps measure"),
        ({"name": "r", "kind": "retrieval", "benchmark": "voc12_retrieval_vits16", "dataset": "ade20k",
          "data_root": str(tmp_path / "ADEChallengeData2016")},
         "evaluates on ADE20K, but voc12_retrieval_vits16 is on Pascal VOC 2012"),
        ({"name": "r", "kind": "retrieval", "benchmark": "voc12_retrieval_vits16", "dataset": "voc",
          "data_root": str(synthetic_root / "voc")}, "holds synthetic data"),
        ({"name": "l", "kind": "linear", "benchmark": "imagenet_linear_vits", "data_root": str(tmp_path)},
         "cannot apply to run r50 (a cnn encoder): benchmark imagenet_linear_vits is for vit encoders"),
    ]
    for step, reason in cases:
        arch = "ResNet-50" if "r50" in reason else "ViT-S"  # the first three: a run the steps apply to
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump({"runs": [{"name": "r50", "checkpoint": str(tmp_path / "r50.pth"), "arch": arch}],
                                        "steps": [step]}))
        with pytest.raises(UserFacingError, match=re.escape(reason)) as refused:
            run_plan(load_plan(path), tmp_path / "run", plan_file=path)
        assert str(refused.value).count("\n  ") == 1  # that reason alone
        assert not (tmp_path / "run" / "r50").exists()  # refused before anything ran
    # a step given per family runs for its family only
    path.write_text(yaml.safe_dump({"runs": [{"name": "r50", "checkpoint": str(tmp_path / "r50.pth"), "arch": "ResNet-50"}],
                                    "steps": [{**cases[3][0], "families": ["vit"]}]}))
    outcomes = run_plan(load_plan(path), tmp_path / "run", plan_file=path)
    assert [(o.status, o.detail) for o in outcomes] == [("skipped", "not for cnn encoders")]


def _probe_plan(tmp_path: Path, checkpoint: Path, synthetic_root: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"runs": [{"name": "enc", "checkpoint": str(checkpoint)}],
                                    "steps": [{"name": "probe", "kind": "probe", "benchmark": "synthetic_linear_probe",
                                               "ade_root": str(synthetic_root / "ade20k" / "ADEChallengeData2016"),
                                               "options": ["--image-size", "32", "--steps", "20"]}]}))
    return path


def test_a_changed_checkpoint_never_reuses_old_results(two_checkpoints, synthetic_root, tmp_path):
    from bam_dense.bench.plan import load_plan, run_plan
    from bam_dense.core.errors import UserFacingError
    from bam_dense.core.identity import sha256

    run_dir = tmp_path / "run"
    (tmp_path / "a").mkdir()
    first = _probe_plan(tmp_path / "a", two_checkpoints["bam"], synthetic_root)
    assert [o.status for o in run_plan(load_plan(first), run_dir, plan_file=first)] == ["done"]
    assert [o.status for o in run_plan(load_plan(first), run_dir, plan_file=first)] == ["skipped"]  # same inputs
    before = _tree(run_dir)
    (tmp_path / "b").mkdir()
    second = _probe_plan(tmp_path / "b", two_checkpoints["lewel_bam"], synthetic_root)
    with pytest.raises(UserFacingError, match=r"checkpoint changed since its result was made[\s\S]*--overwrite"):
        run_plan(load_plan(second), run_dir, plan_file=second)
    assert _tree(run_dir) == before  # nothing rewritten, plan.yaml included
    other_options = yaml.safe_load(first.read_text())
    other_options["steps"][0]["options"][-1] = "30"  # the same checkpoint, another --steps
    (tmp_path / "c").mkdir()
    third = tmp_path / "c" / "plan.yaml"
    third.write_text(yaml.safe_dump(other_options))
    with pytest.raises(UserFacingError, match=r"commands changed since its result was made"):
        run_plan(load_plan(third), run_dir, plan_file=third)
    assert _tree(run_dir) == before
    outcomes = run_plan(load_plan(second), run_dir, overwrite=True, plan_file=second)
    assert [o.status for o in outcomes] == ["done"]
    inputs = json.loads((run_dir / "enc" / "probe" / "inputs.json").read_text())
    assert inputs["checkpoint"]["sha256"] == sha256(two_checkpoints["lewel_bam"])
    assert (run_dir / "plan.1.yaml").read_bytes() == before["plan.yaml"]  # the old plan kept, not silently replaced


def test_a_truncated_metrics_file_is_named_and_not_taken_as_done(two_checkpoints, synthetic_root, tmp_path):
    from bam_dense.bench.plan import load_plan, run_plan
    from bam_dense.bench.report import write_report
    from bam_dense.core.errors import UserFacingError

    plan = _probe_plan(tmp_path, two_checkpoints["bam"], synthetic_root)
    run_dir = tmp_path / "run"
    run_plan(load_plan(plan), run_dir, plan_file=plan)
    metrics = run_dir / "enc" / "probe" / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    with pytest.raises(UserFacingError, match=re.escape(str(metrics)) + " is not valid JSON"):
        write_report([run_dir], run_dir)
    outcomes = run_plan(load_plan(plan), run_dir, plan_file=plan)
    assert [o.status for o in outcomes] == ["done"]  # re-run, not skipped
    assert json.loads(metrics.read_text())["conditions"]["resolution"] == "32 x 32"


def test_a_run_from_another_folder_writes_under_the_callers_run_dir(two_checkpoints, synthetic_root, tmp_path):
    import shutil

    caller = tmp_path / "caller"
    shutil.copytree(synthetic_root / "ade20k", caller / "data" / "ade20k")
    shutil.copy(two_checkpoints["bam"], caller / "enc.pth")
    (caller / "plan.yaml").write_text(yaml.safe_dump({
        "runs": [{"name": "enc", "checkpoint": "enc.pth"}],
        "steps": [{"name": "probe", "kind": "probe", "benchmark": "synthetic_linear_probe",
                   "ade_root": "data/ade20k/ADEChallengeData2016", "options": ["--image-size", "32", "--steps", "20"]}]}))
    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "bench", "run", "plan.yaml", "--run-dir", "runs/x"], cwd=caller,
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (caller / "runs" / "x" / "enc" / "probe" / "metrics.json").is_file()
    assert not (REPO / "runs" / "x").exists()


def test_linear_and_retrieval_steps_record_their_recipe_and_search_and_the_report_names_each_difference(
        two_checkpoints, synthetic_root, tmp_path):
    import shutil

    from bam_dense.bench.plan import load_plan, run_plan
    from bam_dense.bench.report import write_report

    for layout in ("imagenet", "voc"):  # the real layouts, as a user's copy (no synthetic mark)
        shutil.copytree(synthetic_root / layout, tmp_path / layout)
        for mark in (tmp_path / layout).rglob("SYNTHETIC.txt"):
            mark.unlink()
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"runs": [{"name": "enc", "checkpoint": str(two_checkpoints["bam"]), "data": "ImageNet-1k",
                                              "epochs": 400}],
                                    "steps": [{"name": "lincls", "kind": "linear", "benchmark": "imagenet_linear_vitb",
                                               "data_root": str(tmp_path / "imagenet"),
                                               "options": ["--recipe", "dino-vitb", "--resolution", "32", "--epochs", "2",
                                                           "--lrs", "0.01"]},
                                              {"name": "hummingbird", "kind": "retrieval", "benchmark": "voc12_retrieval_vitb16",
                                               "dataset": "voc", "data_root": str(tmp_path / "voc"),
                                               "options": ["--input-size", "32", "--no-augment", "--memory-size", "0"]}]}))
    run_dir = tmp_path / "run"
    assert [o.status for o in run_plan(load_plan(path), run_dir, plan_file=path)] == ["done", "done"]
    linear = json.loads((run_dir / "enc" / "lincls" / "metrics.json").read_text())["conditions"]
    assert (linear["resolution"], linear["head_recipe"], linear["layers"], linear["pooling"], linear["lr_grid"]) == (
        "32 (center crop)", "dino-vitb", "last block", "class token + mean of patch tokens",
        "0.001, 0.01")  # the grid that ran: --lrs plus the recipe's own 0.001, which the probe always trains
    assert linear["head_epochs"] == "2 epochs" and linear["augmentation"] == "random-resized crop 32 + flip, every epoch"
    assert linear["pos_embed_rule"] == "timm"  # a bam-dense checkpoint: timm's resampling (bam_dense.models.pos_embed)
    assert linear["labels"] == "ImageNet val"  # the val folders' own labels, not ImageNet-ReaL
    retrieval = json.loads((run_dir / "enc" / "hummingbird" / "metrics.json").read_text())["conditions"]
    assert (retrieval["dataset"], retrieval["resolution"], retrieval["search"]) == ("Pascal VOC 2012", "32 x 32", "exact")
    assert retrieval["memory"] == "memory every patch, no augmentation, 30 neighbours"
    report = write_report([run_dir], run_dir).read_text()
    dino = next(line for line in report.splitlines() if line.startswith("| DINO ViT-B/16 | 78.20 |"))
    assert "head-training augmentation random-resized crop 224 + flip, every epoch (published) vs random-resized " \
           "crop 32 + flip, every epoch (enc)" in dino
    assert "input resolution 224 (center crop) (published) vs 32 (center crop) (enc)" in dino
    assert "head training 100 epochs (published) vs 2 epochs (enc)" in dino
    assert "evaluation labels" not in dino
    real = next(line for line in report.splitlines() if line.startswith("| DINOv3 ViT-B/16 (ImageNet-ReaL labels) |"))
    assert "evaluation labels ImageNet-ReaL (published) vs ImageNet val (enc)" in real
    hummingbird = next(line for line in report.splitlines() if line.startswith("| DINO ViT-B/16 | 55.90 |"))
    assert "nearest-neighbour search approximate (ScaNN) (published) vs exact (enc)" in hummingbird
    assert "**same protocol**" not in report and "NOT the same protocol" not in report  # the legend is in the charts
    assert (run_dir / "imagenet_linear_vitb_32-center-crop.png").is_file()
