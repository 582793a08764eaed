"""docs/recipes.md against the configs: one row per file under configs/, and every value a row states is the
value the loaded config has.

A row's "values checked" cell is ``key=value; key=value``: dotted keys into the loaded config (integers index
lists), values in YAML syntax. Each family is loaded the way its tool reads it: pretraining YAML through
``bam_dense.core.config.load_config``, MMSeg/MMDet configs through ``mmengine.Config.fromfile``, detectron2
YAML with its ``_BASE_`` chain merged (the child overrides), the detectron2 LazyConfig by evaluating its
assignments' literal parts from the AST (no detectron2 needed), bench plans with ``yaml.safe_load``.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, detectron2_yaml

from bam_dense.core.paths import bundled

DOC = REPO / "docs" / "recipes.md"
CONFIGS = bundled("configs", required=True)
HEADER = ("config", "reproduces", "values checked", "deliberate differences and why")
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


# ---------------------------------------------------------------------------------------------
# Reading the document
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    config: str  # path relative to the repository root
    reproduces: str
    values: str
    differences: str
    line: int


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _strip_code(cell: str) -> str:
    cell = cell.strip()
    if len(cell) >= 2 and cell.startswith("`") and cell.endswith("`"):
        return cell[1:-1].strip()
    return cell


def parse_rows(text: str) -> list[Row]:
    """Rows of every table whose header is exactly HEADER; other tables are prose."""
    rows: list[Row] = []
    in_table = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if tuple(c.lower() for c in cells) == HEADER:
            in_table = True
            continue
        if not in_table or all(set(c) <= set(":- ") for c in cells):
            continue
        assert len(cells) == len(HEADER), f"docs/recipes.md:{number}: expected {len(HEADER)} cells, got {len(cells)}"
        rows.append(Row(_strip_code(cells[0]), cells[1], _strip_code(cells[2]), cells[3], number))
    return rows


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    if _SCIENTIFIC.fullmatch(raw):
        return float(raw)  # YAML 1.1 reads 1e-4 (no dot) as a string
    value = yaml.safe_load(raw)
    return value


def parse_values(cell: str) -> list[tuple[str, Any]]:
    pairs = []
    for item in cell.split(";"):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"{item!r} is not key=value")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), _parse_value(raw)))
    return pairs


# ---------------------------------------------------------------------------------------------
# Loading a config the way its tool does
# ---------------------------------------------------------------------------------------------


class _LazyEval:
    """The literal content of a detectron2 LazyConfig: top-level ``a.b = ...`` assignments, with ``L(f)(**kw)``
    and ``partial(f, **kw)`` read as dicts of their keyword arguments (plus ``_target_``), names and attributes
    resolved against earlier assignments, arithmetic evaluated; anything else is ``{'_expr_': source}``."""

    def __init__(self, text: str):
        self.env: dict = {}
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = self._dotted(node.targets[0])
                if target is not None:
                    self._assign(target, self.eval(node.value))

    @staticmethod
    def _dotted(node: ast.AST) -> list[str] | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        return [node.id, *reversed(parts)]

    def _assign(self, target: list[str], value: Any) -> None:
        node = self.env
        for key in target[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {"_expr_": repr(node.get(key))}
            node = node[key]
        node[target[-1]] = value

    def _lookup(self, dotted: list[str]) -> Any:
        node: Any = self.env
        for key in dotted:
            if not isinstance(node, dict) or key not in node:
                raise KeyError(".".join(dotted))
            node = node[key]
        return node

    def _kwargs(self, call: ast.Call) -> dict:
        return {kw.arg: self.eval(kw.value) for kw in call.keywords if kw.arg is not None}

    def eval(self, node: ast.AST) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError):
            pass
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values) if k is not None}
        if isinstance(node, (ast.Name, ast.Attribute)):
            dotted = self._dotted(node)
            if dotted is not None:
                try:
                    return self._lookup(dotted)
                except KeyError:
                    pass
        if isinstance(node, ast.BinOp):
            left, right = self.eval(node.left), self.eval(node.right)
            ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
                   ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b}
            if type(node.op) in ops and all(isinstance(v, (int, float)) for v in (left, right)):
                return ops[type(node.op)](left, right)
        if isinstance(node, ast.Call):
            func = node.func
            # L(target)(**kwargs)
            if isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and func.func.id == "L" and func.args:
                return {"_target_": ast.unparse(func.args[0]), **self._kwargs(node)}
            if isinstance(func, ast.Name) and func.id == "partial" and node.args:
                return {"_target_": ast.unparse(node.args[0]), **self._kwargs(node)}
        return {"_expr_": ast.unparse(node)}


def _plain(value: Any) -> Any:
    """ConfigDict / tuple -> dict / list, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def family(config: str) -> str:
    parts = Path(config).parts
    if parts[:2] == ("configs", "pretrain"):
        return "pretrain"
    if parts[:2] in (("configs", "mmseg"), ("configs", "mmdet")):
        return parts[1]
    if parts[:2] == ("configs", "detectron2"):
        return "detectron2-lazy" if config.endswith(".py") else "detectron2-yaml"
    if parts[:2] == ("configs", "bench"):
        return "bench"
    raise ValueError(f"{config}: no loader for this folder")


@functools.cache
def load(config: str) -> Any:
    path = REPO / config
    kind = family(config)
    if kind == "pretrain":
        from bam_dense.core.config import load_config, to_dict

        return to_dict(load_config(path))
    if kind in ("mmseg", "mmdet"):
        pytest.importorskip("mmengine", reason="the OpenMMLab stack is not installed")
        pytest.importorskip(kind, reason="the OpenMMLab stack is not installed")
        from mmengine.config import Config

        return _plain(Config.fromfile(str(path)).to_dict())
    if kind == "detectron2-yaml":
        return detectron2_yaml(path)
    if kind == "detectron2-lazy":
        return _LazyEval(path.read_text()).env
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------------------------


_MISSING = object()


def lookup(data: Any, dotted: str) -> Any:
    node = data
    for key in dotted.split("."):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and re.fullmatch(r"-?\d+", key) and -len(node) <= int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
    return node


def same(doc: Any, actual: Any) -> bool:
    if isinstance(doc, bool) or isinstance(actual, bool):
        return isinstance(doc, bool) and isinstance(actual, bool) and doc == actual
    if isinstance(doc, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(doc, actual, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(doc, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(doc) == len(actual) and all(same(a, b) for a, b in zip(doc, actual))
    if isinstance(doc, dict) and isinstance(actual, dict):
        return doc.keys() == actual.keys() and all(same(doc[k], actual[k]) for k in doc)
    return doc == actual


def check_row(row: Row, loader=load) -> list[str]:
    """Every mismatch between the row's stated values and the loaded config, named: config, key, doc, config."""
    try:
        pairs = parse_values(row.values)
    except ValueError as err:
        return [f"{row.config}: values cell (docs/recipes.md:{row.line}) is not key=value; ...: {err}"]
    if not pairs:
        return [f"{row.config}: no values stated (docs/recipes.md:{row.line})"]
    data = loader(row.config)
    problems = []
    for key, expected in pairs:
        actual = lookup(data, key)
        if actual is _MISSING:
            problems.append(f"{row.config}: {key}: docs/recipes.md:{row.line} states {expected!r}, the config has no such key")
        elif not same(expected, _plain(actual)):
            problems.append(f"{row.config}: {key}: docs/recipes.md:{row.line} states {expected!r}, the config has {actual!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@functools.cache
def doc_rows() -> tuple[Row, ...]:
    return tuple(parse_rows(DOC.read_text()))


def _config_files() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in CONFIGS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_every_config_has_exactly_one_row():
    rows = doc_rows()
    named = [r.config for r in rows]
    files = _config_files()
    missing = [f for f in files if f not in named]
    duplicated = sorted({c for c in named if named.count(c) > 1})
    stale = [c for c in named if c not in files]
    assert not missing, f"configs without a row in docs/recipes.md: {missing}"
    assert not duplicated, f"configs with more than one row in docs/recipes.md: {duplicated}"
    assert not stale, f"rows in docs/recipes.md naming no file under configs/: {stale}"


def test_every_row_names_a_source_and_differences():
    for row in doc_rows():
        assert row.reproduces, f"{row.config}: empty 'reproduces' cell (docs/recipes.md:{row.line})"
        assert row.differences, f"{row.config}: empty differences cell (write 'none' if there are none)"
        assert parse_values(row.values), f"{row.config}: no values checked (docs/recipes.md:{row.line})"


@pytest.mark.parametrize("config", _config_files())
def test_config_has_the_values_its_row_states(config):
    rows = [r for r in doc_rows() if r.config == config]
    if not rows:
        pytest.fail(f"{config} has no row in docs/recipes.md")
    problems = check_row(rows[0])
    assert not problems, "\n".join(problems)


_TABLE = """\
| config | reproduces | values checked | deliberate differences and why |
|---|---|---|---|
| `configs/pretrain/bam_vit_small_16gpu.yaml` | BAM | `optim.lr=0.0003; optim.epochs=400; method.top_k=128` | none |
"""


def test_checker_reports_a_wrong_value_with_config_key_doc_and_config_values():
    (row,) = parse_rows(_TABLE)
    assert check_row(row) == []
    wrong = parse_rows(_TABLE.replace("optim.epochs=400", "optim.epochs=300"))[0]
    (problem,) = check_row(wrong)
    assert "configs/pretrain/bam_vit_small_16gpu.yaml" in problem and "optim.epochs" in problem
    assert "states 300" in problem and "has 400" in problem
    missing = parse_rows(_TABLE.replace("method.top_k=128", "method.top_kk=128"))[0]
    (problem,) = check_row(missing)
    assert "method.top_kk" in problem and "no such key" in problem


def test_checker_compares_numbers_lists_and_booleans_by_value():
    data = {"a": {"lr": 1e-4, "ids": (3, 5, 7, 11), "flag": True, "n": 1, "steps": [{"end": 1500}]}}
    row = Row("x", "", "a.lr=1.0e-4; a.ids=[3, 5, 7, 11]; a.flag=true; a.n=1; a.steps.0.end=1500", "", 1)
    assert check_row(row, loader=lambda _: data) == []
    row = Row("x", "", "a.lr=1e-3; a.flag=1; a.n=true; a.ids=[3, 5, 7]", "", 1)
    assert len(check_row(row, loader=lambda _: data)) == 4


def test_lazy_config_reader_evaluates_calls_and_arithmetic():
    env = _LazyEval(
        "from functools import partial\nn = 10\ntrain = get('x').train\ntrain.max_iter = n * 2\n"
        "sched = L(Warmup)(length=5 / train.max_iter, inner=L(Step)(milestones=[1, 2]))\n"
        "opt = get('y')\nopt.params.f = partial(decay, num_layers=12, rate=0.7)\n").env
    assert env["train"]["max_iter"] == 20
    assert lookup(env, "sched.length") == 0.25 and lookup(env, "sched.inner.milestones") == [1, 2]
    assert lookup(env, "opt.params.f.rate") == 0.7 and lookup(env, "opt.params.f._target_") == "decay"
