"""``bam-dense bench report RUN_DIR [RUN_DIR ...]``: report.md and charts, beside the published numbers.

For every benchmark a plan step names, the report lists each run's number, the mean and spread over runs
of the same method (seeds), and the published numbers of that benchmark with their sources, notes and
recipes. Numbers are filed by the conditions their step recorded in its ``metrics.json``
(:mod:`bam_dense.bench.conditions`), never by the benchmark they are filed under: one heading per recorded
protocol, dataset and input resolution, so numbers of different protocols never share a table. A published row
is called "same protocol" only when its recipe is the same (:func:`recipe_check` on the resolved config ``seg
test`` / ``det test`` record or the ``config.yaml`` a detectron2 step wrote, or a recipe the conditions identify) and every condition it states equals what
every run recorded; otherwise the report says in words which values differ, or what was not recorded. Charts
hatch the published bars of another protocol (legend). Several run directories are reported side by side.
Failed steps appear with their error, not as zeros.

Every value is shown in percent, whatever unit the step wrote (J&F and the linear probe's mIoU are
fractions in their metrics files: they are multiplied by 100 here, published numbers alike). Where a step
kept per-image scores (:mod:`bam_dense.bench.stats`), each run's value carries its 95% bootstrap interval
over the validation images, drawn as an error bar in the charts.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from bam_dense.bench import conditions, stats
from bam_dense.bench.conditions import read_metrics
from bam_dense.bench.published import BENCHMARKS, PROTOCOLS, Published, Recipe
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
    resolved_config: dict | None = None  # the mmengine or detectron2 config the step ran, when it records one
    conditions: dict | None = None  # what the step recorded it ran under (bam_dense.bench.conditions)


NOT_APPLICABLE = "not_applicable.txt"  # a step the plan gives to other encoder families (bench run writes it)


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
            value, error, low, high, resolved, conditions = None, None, None, None, None, None
            if (out / "metrics.json").is_file():
                payload = read_metrics(out / "metrics.json")
                metrics = payload["metrics"]
                resolved = payload.get("resolved_config")
                conditions = payload.get("conditions")
                key = bench.metric if bench else next(iter(metrics), None)
                value = to_percent(bench, metrics.get(key))
                if value is not None:
                    low, high = _interval(step, out)
            elif (out / "error.txt").is_file():
                error = (out / "error.txt").read_text().strip().splitlines()[0]
            elif (out / NOT_APPLICABLE).is_file():
                continue
            else:
                error = "not run"
            entries.append(Entry(run["name"], run.get("method", run["name"]), step["name"], step.get("benchmark"), value, error,
                                 low, high, resolved, conditions))
    return entries


def protocol_check(bench, row: Published, runs: list[Entry]) -> tuple[bool, str]:
    """(same protocol?, words) for a published row against these runs: every condition the row states equal to
    what every run recorded (:mod:`bam_dense.bench.conditions`), and the recipe the same (:func:`recipe_check`, or
    for steps that record no config, a recipe their recorded conditions identify)."""
    if not runs:
        return False, "no run of this benchmark to compare"
    recipe = bench.recipe_of(row)
    if recipe.requires or recipe.detectron2:
        same_recipe, recipe_words = recipe_check(recipe, [e.resolved_config for e in runs])
    else:
        same_recipe = recipe.by_conditions
        recipe_words = (f"recipe identified by the recorded conditions ({recipe.note})" if same_recipe
                        else f"recipe not checked: {recipe.note or 'the source states no config values'}")
    differences: list[str] = []
    unstated: list[str] = []
    published = bench.conditions_of(row)
    for e in runs:
        found, extra = conditions.differences(published, e.conditions or {}, e.run)
        differences += [d for d in found if d not in differences]
        unstated += [u for u in extra if u not in unstated]
    if not differences and same_recipe:
        words = f"**same protocol** ({recipe_words}; {len(published)} conditions equal"
        return True, words + (f"; not stated by the source: {', '.join(unstated)})" if unstated else ")")
    return False, "not the same protocol: " + "; ".join(differences + [recipe_words])


_MISSING = object()


def _same_value(run_value, wanted) -> bool:
    if isinstance(wanted, float) and isinstance(run_value, (int, float)) and not isinstance(run_value, bool):
        return math.isclose(run_value, wanted, rel_tol=1e-9)
    return run_value == wanted


def recipe_check(recipe: Recipe, resolved_configs: list[dict | None]) -> tuple[bool, str]:
    """(same recipe?, words): whether every run's config has every value ``recipe`` requires of its framework
    (``requires`` of an mmengine config, ``detectron2`` of the config a detectron2 step wrote)."""
    if not (recipe.requires or recipe.detectron2):
        return False, f"not checked: {recipe.note or 'the recipe states no config values'}"
    configs = [c for c in resolved_configs if c is not None]
    if not configs:
        return False, "not checked: these runs recorded no config"
    differences = []
    counts = []
    for config in configs:
        detectron2 = conditions.is_detectron2_config(config)
        required = recipe.detectron2 if detectron2 else recipe.requires
        if not required:
            framework = "detectron2" if detectron2 else "mmengine"
            return False, f"not checked: the recipe states no {framework} config values" + (
                f" ({recipe.note})" if recipe.note else "")
        if len(required) not in counts:
            counts.append(len(required))
        for key, wanted in required.items():
            got = conditions.lookup(config, key, _MISSING)
            if got is _MISSING or not _same_value(got, wanted):
                shown = "missing" if got is _MISSING else repr(got)
                item = f"`{key}` {shown} (recipe {wanted!r})"
                if item not in differences:
                    differences.append(item)
    if differences:
        return False, "different recipe: " + "; ".join(differences)
    return True, f"same recipe ({'/'.join(str(n) for n in counts)} values checked)"


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def _fmt_spread(e: Entry) -> str:
    return "-" if e.low is None or e.high is None else f"[{e.low:.2f}, {e.high:.2f}]"


def _chart(bench, rows: list[tuple[str, float, str, tuple[float, float] | None]], path: Path, title: str) -> Path:
    """Horizontal bars in percent: these runs in blue with their 95% intervals as error bars, published rows of
    the same protocol in grey, published rows of another protocol hatched in light orange (legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    styles = {"run": ("tab:blue", ""), "same": ("tab:gray", ""), "other": ("#f5c89a", "//")}
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.6))
    values = [r[1] for r in rows]
    err = [[max(0.0, v - iv[0]) if iv else 0.0 for v, iv in zip(values, (r[3] for r in rows))],
           [max(0.0, iv[1] - v) if iv else 0.0 for v, iv in zip(values, (r[3] for r in rows))]]
    bars = ax.barh(range(len(rows)), values, color=[styles[r[2]][0] for r in rows],
                   xerr=err if any(r[3] for r in rows) else None, capsize=3, edgecolor="black", linewidth=0.4)
    for bar, r in zip(bars, rows):
        bar.set_hatch(styles[r[2]][1])
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{bench.metric} (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Patch(facecolor="tab:blue", label="these runs (95% bootstrap interval)"),
                       Patch(facecolor="tab:gray", label="published, same protocol"),
                       Patch(facecolor="#f5c89a", hatch="//", label="published, NOT the same protocol")],
              fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def group_of(e: Entry) -> tuple[str, ...]:
    """The table a number is filed in: its recorded protocol, dataset and input resolution."""
    if e.conditions is None:
        return ("conditions not recorded",)
    return tuple(str(e.conditions.get(k, "?")) for k in conditions.GROUP_KEYS)


def write_report(run_dirs: list[Path], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    entries = [e for d in run_dirs for e in collect(d)]
    lines = ["# bam-dense benchmark report", "", f"Run directories: {', '.join(str(d) for d in run_dirs)}", "",
             "All values in percent. Intervals: 95% bootstrap over the validation images (sequences for DAVIS) where the "
             "step kept per-image scores; they cover the choice of images, not training seeds. Every number is filed "
             "under the conditions its step recorded (metrics.json `conditions`), not those of the benchmark it names.", ""]
    if any(e.benchmark and e.benchmark.startswith("synthetic") for e in entries):
        lines += ["> **Synthetic data checks the pipeline; it is not a benchmark.** Numbers on generated data say that every",
                  "> stage ran end to end, not how good an encoder is.", ""]
    done = [e for e in entries if e.value is not None]
    groups: dict[tuple[str, ...], list[Entry]] = {}
    for e in done:
        groups.setdefault(group_of(e), []).append(e)
    for key, members in groups.items():
        if key == ("conditions not recorded",):
            lines += ["# Conditions not recorded", "", "These steps' metrics.json hold no `conditions` (written by an older "
                      "bam-dense, or by a command run outside `bench run`): never compared with a published row.", ""]
        else:
            kind, dataset, resolution = key
            lines += [f"# Protocol: {kind}, {dataset}, input {resolution}", "",
                      f"{PROTOCOLS.get(kind, 'a protocol no benchmark names')}. The numbers under this heading are not "
                      "comparable with those under another.", ""]
        for bench_id in dict.fromkeys(e.benchmark for e in members):
            _benchmark_section(bench_id, [e for e in members if e.benchmark == bench_id], out, lines, key)
    failed = [e for e in entries if e.value is None]
    if failed:
        lines += ["# Steps without a result", "", "| encoder | step | benchmark | why |", "|---|---|---|---|"]
        lines += [f"| {e.run} | {e.step} | {e.benchmark or '-'} | {e.error or 'no value for the metric'} |" for e in failed]
        lines.append("")
        reported = {e.benchmark for e in done}
        for bench_id in dict.fromkeys(e.benchmark for e in failed if e.benchmark not in reported):
            _benchmark_section(bench_id, [e for e in failed if e.benchmark == bench_id], out, lines, ("no result",))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _conditions_cell(c: dict | None) -> str:
    if not c:
        return "-"
    epochs = c.get("pretrain_epochs")
    epochs = "? epochs" if epochs is None else (f"{epochs} epochs" if isinstance(epochs, int) else str(epochs))
    patch = c.get("patch")
    return (f"{c.get('pretrain_data') or '?'}, {epochs}; {c.get('arch') or '?'}"
            f"{'' if patch in (None, 'n/a') else '/' + str(patch)}")


def _recorded_cell(c: dict | None) -> str:
    if not c:
        return "-"
    skip = {"pretrain_data", "pretrain_epochs", "arch", "patch", *conditions.GROUP_KEYS}
    return "; ".join(f"{conditions.LABELS.get(k, k)}: {v}" for k, v in c.items() if k not in skip)


def _benchmark_section(bench_id, rows: list[Entry], out: Path, lines: list[str], group: tuple[str, ...]) -> None:
    bench = BENCHMARKS.get(bench_id or "")
    title = bench.title if bench else f"step {rows[0].step}"
    # A number measured at another resolution than its benchmark's published rows is titled with the value it ran at.
    elsewhere = bool(bench and bench.results and len(group) == 3 and group[2] != bench.resolution_of())
    lines += [f"## {title}" + (f" ({group[2]})" if elsewhere else ""), ""]
    if bench:
        lines += [f"Protocol: {bench.protocol}. Metric: `{bench.metric}`, in percent.", ""]
    lines += ["| encoder | method | value (%) | 95% interval (%) | pretraining, architecture | recorded conditions |",
              "|---|---|---|---|---|---|"]
    chart_rows = []
    for e in rows:
        lines.append(f"| {e.run} | {e.method} | {_fmt(e.value)} | {_fmt_spread(e)} | {_conditions_cell(e.conditions)} | "
                     f"{_recorded_cell(e.conditions) if e.value is not None else e.error or '-'} |")
        if e.value is not None:
            chart_rows.append((e.run, e.value, "run", (e.low, e.high) if e.low is not None else None))
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
    if bench and bench.results and group != ("conditions not recorded",):
        lines += ["", "Published (a row is the same protocol as these runs only where it says \"same protocol\": the "
                  "same recipe, and every condition it states equal to what each run recorded):", "",
                  "| method | value (%) | pretraining, architecture | protocol, resolution | recipe | against these runs "
                  "| source | note |", "|---|---|---|---|---|---|---|---|"]
        for p in bench.results:
            recipe = bench.recipe_of(p)
            same, words = protocol_check(bench, p, [e for e in rows if e.value is not None])
            lines.append(f"| {p.method} | {_fmt(to_percent(bench, p.value))} | "
                         f"{_conditions_cell(bench.conditions_of(p))} | {bench.kind}, {bench.resolution_of(p)} | "
                         f"{recipe.id} ({recipe.source}) | {words} | {p.source} | {p.note} |")
            chart_rows.append((p.method, to_percent(bench, p.value), "same" if same else "other", None))
    if bench and chart_rows:
        name = f"{bench_id}_{re.sub(r'[^A-Za-z0-9]+', '-', group[2]).strip('-')}" if elsewhere else bench_id
        png = _chart(bench, chart_rows, out / f"{name}.png", f"{title}\n{', '.join(group)}")
        lines += ["", f"![{title}]({png.name})"]
    lines.append("")
