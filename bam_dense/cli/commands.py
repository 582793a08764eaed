"""What each ``bam-dense`` subcommand does with its parsed arguments.

The library modules expose plain functions; this module is the only place that reads an
``argparse.Namespace``, prints for the terminal and turns results into exit codes. Every import is local
to its command, so ``bam-dense --help`` imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import sys
from argparse import Namespace
from pathlib import Path

from bam_dense.core.errors import UserFacingError


def pretrain(args: Namespace) -> int:
    from bam_dense.core.config import dump, load_config

    if args.dry_run:
        from bam_dense.engine.pretrain_dry_run import dry_run

        result = dry_run(args.config, args.overrides, data_root=args.data_root, steps=args.dry_run_steps,
                         scale=args.dry_run_scale)
        print("\n".join(f"[bam-dense] {line}" for line in result.lines()))
        return 0
    if args.data_root:
        raise UserFacingError("--data-root goes with --dry-run; a full run reads data.path (override: data.path=DIR)")
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump(cfg))
        return 0
    # the trainer (torchvision, ~2 s to import) only when training, not for printing
    from bam_dense.engine.trainer import PREEMPTED_EXIT, run

    main_process = int(os.environ.get("RANK", "0")) == 0  # the process group is gone after run()
    summary = run(cfg)
    if main_process:
        if summary.first_loss is not None:
            print(f"[bam-dense] loss {summary.first_loss:.4f} -> {summary.last_loss:.4f} over {summary.steps} steps")
        if summary.knn:
            line = f"[bam-dense] k-NN top-1: trained {100 * summary.knn[-1]['knn_top1']:.2f}%"
            if summary.knn_random_init is not None:
                line += f", random init {100 * summary.knn_random_init:.2f}%"
            print(line)
        print(f"[bam-dense] checkpoint: {summary.checkpoint}")
    return PREEMPTED_EXIT if summary.preempted else 0


def convert(args: Namespace) -> int:
    from bam_dense.convert import convert as run_convert
    from bam_dense.convert import report_path

    report = run_convert(args.src, args.to, args.out, arch=args.arch, which=args.which, img_size=args.img_size,
                         source_format=args.source_format, trust_source=args.trust_source, force=args.force)
    print(report.summary())
    print(f"  report       {report_path(args.out, args.to)}")
    return 0


def davis_propagate(args: Namespace) -> int:
    from bam_dense.davis.propagate import PropagationParams, run

    params = PropagationParams(args.n_last_frames, args.size_mask_neighborhood, args.topk, args.temperature, args.resolution)
    done = run(args.checkpoint, args.davis_root, args.out, args.arch, args.set, args.sequences, params, args.patch_size,
               args.resnet_stage, args.which, args.device, args.save_overlays, args.trust_source,
               pos_resample=args.pos_resample, overwrite=args.overwrite)
    from bam_dense.davis.propagate import resolution_protocol

    print(f"[bam-dense] propagated {len(done)} sequence(s) into {args.out} at short side {args.resolution} "
          f"({resolution_protocol(args.resolution)})")
    return 0


def _check_out(args: Namespace, *sources: str) -> None:
    """An ``--out`` file: refused where it exists (unless --force) or is one of the command's inputs."""
    if args.out:
        from bam_dense.core.outputs import check_output

        check_output(args.out, force=args.force, sources=tuple(s for s in sources if s))


def eval_retrieval(args: Namespace) -> int:
    from bam_dense.eval.retrieval import RetrievalParams, run

    _check_out(args, args.checkpoint, args.train_list)

    params = RetrievalParams(input_size=args.input_size, memory_size=args.memory_size or None,
                             augmentation_epochs=args.augmentation_epochs, augment=not args.no_augment,
                             neighbours=args.neighbours, temperature=args.temperature, batch_size=args.batch_size,
                             seed=args.seed)
    record = run(args.checkpoint, args.dataset, args.data_root, args.out, params, args.arch, args.which,
                 args.trust_source, args.device, args.pos_resample, args.train_list, args.nn_backend,
                 cache_dir=args.cache_dir)
    print(f"[bam-dense] retrieval mIoU {record['metrics']['mIoU']:.2f} on {args.dataset} at {args.input_size} px "
          f"({record['memory_patches']} memory patches, {record['index']} search)")
    if args.out:
        print(f"[bam-dense] {args.out}")
    return 0


def eval_linear(args: Namespace) -> int:
    from bam_dense.eval.linear_probe import run

    _check_out(args, args.checkpoint)

    record = run(args.checkpoint, args.data_root, args.out, args.recipe, args.resolution, args.cache_dir, args.lrs,
                 args.epochs, args.batch_size, args.selection, args.holdout_fraction, args.arch, args.which,
                 args.trust_source, args.device, args.workers, args.seed, protocol=args.protocol,
                 pos_resample=args.pos_resample)
    grid = record["grid"]
    print(f"[bam-dense] linear probe ({record['protocol']}, recipe {record['recipe']['name']}, {record['resolution']} px): top-1 "
          f"{record['metrics']['top1']:.2f} at lr {grid['selected_lr']:g} (selected on {grid['selection']}); "
          f"recipe lr {record['recipe']['lr']:g}: {record['metrics']['top1_at_recipe_lr']:.2f}")
    if record["features_from_cache"]:
        print(f"[bam-dense] features from {record['features_from_cache']}")
    return 0


def davis_eval(args: Namespace) -> int:
    from bam_dense.davis.evaluate import evaluate, plot_per_sequence, write_csvs, write_metrics_json

    out = Path(args.out) if args.out else Path(args.results)
    if out.exists() and not out.is_dir():
        raise UserFacingError(f"--out {out} is a file; davis eval writes a folder (CSVs, chart, metrics.json)")
    res = evaluate(args.davis_root, args.results, args.task, args.set, args.sequences, args.workers)
    gp, sp = write_csvs(res, out, args.set)
    chart = plot_per_sequence(res, out / f"per-sequence_results-{args.set}.png")
    metrics = write_metrics_json(res, out / "metrics.json", args.davis_root, args.results, args.task, args.set)
    sys.stdout.write(f"--------------------------- Global results for {args.set} ---------------------------\n")
    print(res.table())
    resolution = json.loads(metrics.read_text()).get("resolution")
    if resolution is not None:
        print(f"[bam-dense] frames at short side {resolution}")
    print(f"\n[bam-dense] {gp}\n[bam-dense] {sp}\n[bam-dense] {chart}")
    return 0


def _finetune_module(args: Namespace):
    if args.command == "seg":
        from bam_dense.downstream import seg

        return seg
    from bam_dense.downstream import det

    return det


def finetune_train(args: Namespace) -> int:
    if args.dry_run:
        from bam_dense.downstream import mm_dry_run

        result = mm_dry_run.train(args.command, args.config, args.checkpoint, args.work_dir, args.cfg_options, args.data_root,
                              iters=args.dry_run_iters, eval_images=args.dry_run_images, scale=args.dry_run_scale,
                              amp=args.amp, trust_source=args.trust_source)
        print("\n".join(f"[bam-dense] {line}" for line in result.lines()))
        return 0
    if not args.checkpoint:
        raise UserFacingError("--checkpoint is required (only --dry-run makes a random-init one)")
    _finetune_module(args).train(args.config, args.checkpoint, args.work_dir, args.cfg_options, args.amp, args.resume,
                                 args.launcher, args.data_root, args.trust_source)
    return 0


def finetune_test(args: Namespace) -> int:
    _check_out(args, args.checkpoint)
    if args.dry_run:
        from bam_dense.downstream import mm_dry_run

        result = mm_dry_run.test(args.command, args.config, args.checkpoint, args.work_dir, args.cfg_options, args.out,
                             args.data_root, eval_images=args.dry_run_images, scale=args.dry_run_scale)
        print("\n".join(f"[bam-dense] {line}" for line in result.lines()))
        return 0
    _finetune_module(args).test(args.config, args.checkpoint, args.work_dir, args.cfg_options, args.out, args.launcher,
                                args.data_root)
    return 0


def bench_run(args: Namespace) -> int:
    from bam_dense.bench.plan import check_plan, load_plan, record_plan, run_plan, slurm_script

    plan = load_plan(args.plan)  # its relative paths: the caller's working directory, else bundled configs
    run_dir = Path(args.run_dir).resolve()
    if args.print_slurm:
        check_plan(plan)
        print(slurm_script(plan, args.plan, run_dir))
        return 0
    if args.dry_run:
        from bam_dense.bench.plan_dry_run import run_plan_dry

        check_plan(plan)
        record_plan(args.plan, run_dir)
        outcomes = run_plan_dry(plan, run_dir, args.steps, args.skip, args.dry_run_scale)
    else:
        outcomes = run_plan(plan, run_dir, args.steps, args.skip, args.force, args.overwrite, plan_file=args.plan)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in outcomes:
        print(f"[bam-dense] {o.run:<20} {o.step:<20} {o.status:<8} {o.detail}")
    if failed:
        print(f"[bam-dense] {len(failed)} step(s) failed; the others' results are in {run_dir}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"[bam-dense] dry-run done; each step's log.txt in {run_dir} has its s/iter and peak memory")
        return 0
    print(f"[bam-dense] done; report: bam-dense bench report {run_dir}")
    return 0


def bench_report(args: Namespace) -> int:
    from bam_dense.bench.report import write_report

    dirs = [Path(d) for d in args.run_dirs]
    path = write_report(dirs, Path(args.out) if args.out else dirs[0])
    print(f"[bam-dense] report: {path}")
    return 0


def demo(args: Namespace) -> int:
    from bam_dense.demo import run_demo

    run_demo(Path(args.out), args.reduced, args.skip)
    return 0


def probe(args: Namespace) -> int:
    from bam_dense.encoders import load_backbone
    from bam_dense.eval.dense_probe import probe as run_probe
    from bam_dense.eval.dense_probe import random_init_like

    if not args.ade_root and not args.davis_root:
        raise UserFacingError("give --ade-root and/or --davis-root")
    _check_out(args, args.checkpoint)
    from bam_dense.eval.features import FeatureCache

    rows = {"checkpoint": run_probe(load_backbone(args.checkpoint, args.arch, args.which, args.trust_source),
                                    args.ade_root, args.davis_root, args.image_size, args.davis_resolution, args.steps,
                                    FeatureCache(args.checkpoint, args.cache_dir))}
    if args.random_baseline:
        rows["random init"] = run_probe(random_init_like(args.checkpoint), args.ade_root, args.davis_root, args.image_size,
                                        args.davis_resolution, args.steps)
    print(f"{'encoder':<12} {'linear-probe mIoU':>18} {'DAVIS J&F':>10}")
    for name, r in rows.items():
        m = "-" if r.miou is None else f"{100 * r.miou:.2f}"
        d = "-" if r.davis_jf is None else f"{r.davis_jf:.3f}"
        print(f"{name:<12} {m:>18} {d:>10}")
    if args.out:
        payload = {"task": "dense_probe", "checkpoint": args.checkpoint, "metrics": rows["checkpoint"].as_dict(),
                   "options": {"image_size": args.image_size, "davis_resolution": args.davis_resolution, "steps": args.steps}}
        if rows["checkpoint"].areas is not None:  # for bootstrap intervals over the validation images
            payload["per_image"] = rows["checkpoint"].areas
        if "random init" in rows:
            payload["random_init"] = rows["random init"].as_dict()
        from bam_dense.core.atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps(payload, indent=1))
    return 0


def doctor(args: Namespace) -> int:
    from dataclasses import asdict

    from bam_dense.install.doctor import collect, render

    report = collect()
    if args.json:
        print(json.dumps({"versions": report.versions, "hardware": report.hardware,
                          "features": [asdict(f) for f in report.features], "core_ok": report.core_ok}, indent=2))
    else:
        print(render(report))
    return 0 if report.core_ok else 1


def install_openmmlab(args: Namespace) -> int:
    from bam_dense.install.openmmlab import Installer, default_cache_dir

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    installer = Installer(cache, args.cuda, args.jobs, args.force_rebuild, Path(args.log) if args.log else None)
    return installer.run()


def make_synthetic(args: Namespace) -> int:
    from bam_dense.core.outputs import check_output
    from bam_dense.data.synthetic import make

    check_output(args.root, "--root", force=args.force, folder=True)

    out = make(args.layout, args.root, num=args.num, size=args.size, seed=args.seed, colors=args.colors)
    print(f"wrote synthetic {args.layout} to {out}")
    return 0
