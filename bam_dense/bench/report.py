"""``bam-dense bench report RUN_DIR [RUN_DIR ...]``: report.md and charts, beside the published numbers.

For every benchmark a plan step names, the report lists each run's number, the mean and spread over runs
of the same method (seeds), and the published numbers of that benchmark with their sources, notes and
recipes. Benchmarks are grouped by protocol kind (fine-tuned / frozen linear / retrieval / propagation) and
input resolution, one heading per group, so numbers of different protocols never share a table. A published
row is called "same recipe" only when every run's resolved config (recorded by ``seg test`` / ``det test``)
has every value the row's recipe requires, and "same protocol" only when, besides, its conditions
(:class:`~bam_dense.bench.published.Conditions`: pretraining data and epochs, architecture, patch size,
protocol, resolution) equal every run's (the plan's ``runs`` record them); otherwise the report says in words
which values differ, or what was not recorded. Several run directories are reported side by side. Failed
steps appear with their error, not as zeros.

Every value is shown in percent, whatever unit the step wrote (J&F and the linear probe's mIoU are
fractions in their metrics files: they are multiplied by 100 here, published numbers alike). Where a step
kept per-image scores (:mod:`bam_dense.bench.stats`), each run's value carries its 95% bootstrap interval
over the validation images, drawn as an error bar in the charts.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from bam_dense.bench import stats
from bam_dense.bench.published import BENCHMARKS, PROTOCOLS, Conditions, Published, Recipe
from bam_dense.core.errors import UserFacingError

MAX_SLOW_UNITS = 500  # above this many images, no bootstrap of COCO AP (each replicate re-runs COCO evaluation)


@dataclass
class Entry:
    run: str
    method: str
    step: str
    benchmark: str | None
    value: float | None  # percent
    error: str | None = None
    low: float | None = None  # 95% bootstrap interval over the validation images, percent
    high: float | None = None
    resolved_config: dict | None = None  # the mmengine config the step ran, when it records one
    conditions: Conditions | None = None  # the run's (plan) with the step's protocol and resolution


def to_percent(bench, value: float | None) -> float | None:
    """A metric value in percent: benchmarks with unit "" store fractions."""
    if value is None or bench is None or bench.unit == "%":
        return value
    return 100.0 * value


def _interval(step: dict, out: Path) -> tuple[float | None, float | None]:
    try:
        units = stats.step_units(step["name"], step.get("kind", ""), [out])
        if units.slow and units.n_units > MAX_SLOW_UNITS:
            return None, None
        iv = stats.step_interval(step["name"], step.get("kind", ""), out)
        return iv.low, iv.high
    except (stats.MissingUnits, OSError, ValueError, KeyError, ImportError):
        return None, None


def collect(run_dir: Path) -> list[Entry]:
    plan_file = run_dir / "plan.yaml"
    if not plan_file.is_file():
        raise UserFacingError(f"{run_dir} has no plan.yaml (not a bam-dense bench run directory)")
    plan = yaml.safe_load(plan_file.read_text())
    entries = []
    for run in plan.get("runs", []):
        for step in plan.get("steps", []):
            bench = BENCHMARKS.get(step.get("benchmark") or "")
            out = run_dir / run["name"] / step["name"]
            value, error, low, high, resolved = None, None, None, None, None
            if (out / "metrics.json").is_file():
                payload = json.loads((out / "metrics.json").read_text())
                metrics = payload.get("metrics", {})
                resolved = payload.get("resolved_config")
                key = bench.metric if bench else next(iter(metrics), None)
                value = to_percent(bench, metrics.get(key))
                if value is not None:
                    low, high = _interval(step, out)
            elif (out / "error.txt").is_file():
                error = (out / "error.txt").read_text().strip().splitlines()[0]
            else:
                error = "not run"
            entries.append(Entry(run["name"], run.get("method", run["name"]), step["name"], step.get("benchmark"), value, error,
                                 low, high, resolved, run_conditions(run, bench)))
    return entries


_VIT_SIZES = {"tiny": "T", "small": "S", "base": "B", "large": "L", "huge": "H", "giant": "g"}


def describe_arch(arch: str, kwargs: dict | None = None) -> tuple[str, int | None]:
    """(architecture as the leaderboard writes it, patch size) of a timm name: ``vit_base_patch16_224`` ->
    ("ViT-B", 16), ``resnet50`` -> ("ResNet-50", None); other names are kept as they are."""
    kwargs = kwargs or {}
    if m := re.match(r"(?:vit|deit)_(tiny|small|base|large|huge|giant)_patch(\d+)", arch):
        return f"ViT-{_VIT_SIZES[m.group(1)]}", int(kwargs.get("patch_size", m.group(2)))
    if m := re.fullmatch(r"resnet(\d+)", arch):
        return f"ResNet-{m.group(1)}", None
    return arch, None


def _pretraining_facts(run: dict) -> dict:
    """Architecture, patch size and epochs of a run that pretrains, from its pretraining config (the run's own
    record); empty when the config cannot be read here."""
    config = (run.get("pretrain") or {}).get("config")
    if not config:
        return {}
    from bam_dense.core.config import load_config
    from bam_dense.core.paths import REPO_ROOT

    path = Path(config) if Path(config).is_absolute() else REPO_ROOT / config
    try:
        cfg = load_config(path)
    except (OSError, UserFacingError, ValueError):
        return {}
    arch, patch = describe_arch(cfg.model.arch, dict(cfg.model.kwargs or {}))
    return {"arch": arch, "patch": patch, "epochs": int(cfg.optim.epochs)}


def run_conditions(run: dict, bench) -> Conditions | None:
    """A plan run's conditions on ``bench``: what the run records (data, epochs, arch, patch; a run that pretrains
    takes arch, patch and epochs from its pretraining config where the plan does not state them; None where
    neither does), the protocol and resolution of the benchmark's recipe, which the step ran."""
    if bench is None:
        return None
    run = {**_pretraining_facts(run), **{k: v for k, v in run.items() if v is not None}}
    arch = run.get("arch")
    patch = run.get("patch")
    if patch is None and arch is not None and "vit" not in str(arch).lower():
        patch = "n/a"
    return Conditions(run.get("data"), run.get("epochs"), arch, patch, bench.kind, bench.resolution_of())


def protocol_check(bench, row: Published, runs: list[Entry]) -> tuple[bool, str]:
    """(same protocol?, words) for a published row against these runs: every condition equal for every run,
    and the recipe the same (:func:`recipe_check`)."""
    same_recipe, recipe_words = recipe_check(bench.recipe_of(row), [e.resolved_config for e in runs])
    if not runs:
        return False, "no run of this benchmark to compare"
    differences: list[str] = []
    published = bench.conditions(row)
    for e in runs:
        for item in published.differences(e.conditions, theirs=e.run):
            if item not in differences:
                differences.append(item)
    if not differences and same_recipe:
        return True, f"**same protocol** ({recipe_words})"
    return False, "not the same protocol: " + "; ".join(differences + [recipe_words])


_MISSING = object()


def _lookup(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _same_value(run_value, wanted) -> bool:
    if isinstance(wanted, float) and isinstance(run_value, (int, float)) and not isinstance(run_value, bool):
        return math.isclose(run_value, wanted, rel_tol=1e-9)
    return run_value == wanted


def recipe_check(recipe: Recipe, resolved_configs: list[dict | None]) -> tuple[bool, str]:
    """(same recipe?, words): whether every run's config has every value ``recipe`` requires."""
    if not recipe.requires:
        return False, f"not checked: {recipe.note or 'the recipe states no config values'}"
    configs = [c for c in resolved_configs if c is not None]
    if not configs:
        return False, "not checked: these runs recorded no config"
    differences = []
    for config in configs:
        for key, wanted in recipe.requires.items():
            got = _lookup(config, key)
            if got is _MISSING or not _same_value(got, wanted):
                shown = "missing" if got is _MISSING else repr(got)
                item = f"`{key}` {shown} (recipe {wanted!r})"
                if item not in differences:
                    differences.append(item)
    if differences:
        return False, "different recipe: " + "; ".join(differences)
    return True, f"same recipe ({len(recipe.requires)} values checked)"


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def _fmt_spread(e: Entry) -> str:
    return "-" if e.low is None or e.high is None else f"[{e.low:.2f}, {e.high:.2f}]"


def _chart(bench, rows: list[tuple[str, float, bool, tuple[float, float] | None]], path: Path) -> Path:
    """Horizontal bars in percent; these runs in blue with their 95% intervals as error bars, published in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    labels = [r[0] for r in rows]
    values = [r[1] for r in rows]
    colors = ["tab:blue" if r[2] else "tab:gray" for r in rows]
    err = [[max(0.0, v - iv[0]) if iv else 0.0 for v, iv in zip(values, (r[3] for r in rows))],
           [max(0.0, iv[1] - v) if iv else 0.0 for v, iv in zip(values, (r[3] for r in rows))]]
    ax.barh(range(len(rows)), values, color=colors, xerr=err if any(r[3] for r in rows) else None, capsize=3)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{bench.metric} (%)")
    ax.set_title(bench.title + "\n(blue: these runs with 95% bootstrap intervals over the validation images, grey: published)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dirs: list[Path], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    entries = [e for d in run_dirs for e in collect(d)]
    lines = ["# bam-dense benchmark report", "", f"Run directories: {', '.join(str(d) for d in run_dirs)}", "",
             "All values in percent. Intervals: 95% bootstrap over the validation images (sequences for DAVIS) where the "
             "step kept per-image scores; they cover the choice of images, not training seeds.", ""]
    benchmarks = []
    for e in entries:
        if e.benchmark not in benchmarks:
            benchmarks.append(e.benchmark)
    synthetic = any(b and b.startswith("synthetic") for b in benchmarks)
    if synthetic:
        lines += ["> **Synthetic data checks the pipeline; it is not a benchmark.** Numbers on generated data say that every",
                  "> stage ran end to end, not how good an encoder is.", ""]
    groups: dict[tuple[str, str], list] = {}
    for bench_id in benchmarks:
        bench = BENCHMARKS.get(bench_id or "")
        key = (bench.kind, bench.resolution_of()) if bench else ("unknown protocol", "unknown resolution")
        groups.setdefault(key, []).append(bench_id)
    for (kind, resolution), members in groups.items():
        lines += [f"# Protocol: {kind}, input {resolution}", "",
                  f"{PROTOCOLS.get(kind, 'steps that name no known benchmark')}. The numbers under this heading are "
                  "not comparable with those under another.", ""]
        for bench_id in members:
            _benchmark_section(bench_id, entries, out, lines)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _conditions_cell(c: Conditions | None) -> str:
    if c is None:
        return "-"
    epochs = "? epochs" if c.epochs is None else (f"{c.epochs} epochs" if isinstance(c.epochs, int) else str(c.epochs))
    return (f"{c.data or '?'}, {epochs}; {c.arch or '?'}"
            f"{'' if c.patch in (None, 'n/a') else '/' + str(c.patch)}")


def _benchmark_section(bench_id, entries: list[Entry], out: Path, lines: list[str]) -> None:
    bench = BENCHMARKS.get(bench_id or "")
    rows = [e for e in entries if e.benchmark == bench_id]
    title = bench.title if bench else f"step {rows[0].step}"
    lines += [f"## {title}", ""]
    if bench:
        lines += [f"Protocol: {bench.protocol}. Metric: `{bench.metric}`, in percent.", ""]
    lines += ["| encoder | method | value (%) | 95% interval (%) | note | pretraining, architecture |",
              "|---|---|---|---|---|---|"]
    chart_rows = []
    for e in rows:
        lines.append(f"| {e.run} | {e.method} | {_fmt(e.value)} | {_fmt_spread(e)} | {e.error or ''} | "
                     f"{_conditions_cell(e.conditions)} |")
        if e.value is not None:
            chart_rows.append((e.run, e.value, True, (e.low, e.high) if e.low is not None else None))
    by_method: dict[str, list[float]] = {}
    for e in rows:
        if e.value is not None:
            by_method.setdefault(e.method, []).append(e.value)
    multi = {m: v for m, v in by_method.items() if len(v) > 1}
    if multi:
        lines += ["", "| method | runs | mean (%) | std (%) | min (%) | max (%) |", "|---|---|---|---|---|---|"]
        for m, v in multi.items():
            lines.append(f"| {m} | {len(v)} | {_fmt(statistics.mean(v))} | {_fmt(statistics.stdev(v))} | "
                         f"{_fmt(min(v))} | {_fmt(max(v))} |")
    if bench and bench.results:
        lines += ["", "Published (a row is the same protocol as these runs only where it says \"same protocol\": the "
                  "same recipe, pretraining data and epochs, architecture, patch size, protocol and resolution):", "",
                  "| method | value (%) | pretraining, architecture | protocol, resolution | recipe | against these runs "
                  "| source | note |", "|---|---|---|---|---|---|---|---|"]
        done = [e for e in rows if e.value is not None]
        for p in bench.results:
            recipe = bench.recipe_of(p)
            _, words = protocol_check(bench, p, done)
            lines.append(f"| {p.method} | {_fmt(to_percent(bench, p.value))} | {_conditions_cell(bench.conditions(p))} | "
                         f"{bench.kind}, {bench.resolution_of(p)} | {recipe.id} ({recipe.source}) | {words} | "
                         f"{p.source} | {p.note} |")
            chart_rows.append((p.method, to_percent(bench, p.value), False, None))
    if bench and chart_rows:
        png = _chart(bench, chart_rows, out / f"{bench_id}.png")
        lines += ["", f"![{title}]({png.name})"]
    lines.append("")
