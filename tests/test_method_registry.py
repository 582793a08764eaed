"""A method is one file: a toy method written to a single file registers itself, is read from a config and trains.

The toy file below is all a new method needs (docs/methods.md, "Adding a method"): its parameters with their
rules, its class, its registration. Nothing else in the package is edited.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import tiny_pretrain_dict

from bam_dense.core import registry
from bam_dense.core.config import ConfigError, dump, load_config
from bam_dense.core.registry import MethodParams, method_names, register_method
from bam_dense.engine.trainer import Trainer
from bam_dense.methods import build_method

TOY = textwrap.dedent('''
    """A toy method: the cosine distance between one global crop's projection and the teacher's of the other."""

    from __future__ import annotations

    from dataclasses import dataclass

    import torch.nn as nn
    import torch.nn.functional as F

    from bam_dense.core.config import COUNT, POSITIVE, ConfigError
    from bam_dense.core.registry import MethodParams, register_method
    from bam_dense.methods.base import Method, multicrop_features
    from bam_dense.models.backbones import describe


    @dataclass
    class ToyParams(MethodParams):
        name: str = "toy_cosine"
        out_dim: int = 8
        weight: float = 1.0
        RANGES = {"out_dim": COUNT, "weight": POSITIVE}
        NEEDS_TEACHER = True

        def check(self, cfg):
            if cfg.data.views.global_crops < 2:
                raise ConfigError("method toy_cosine pairs two global crops: set data.views.global_crops: 2")


    class ToyNet(nn.Module):
        def __init__(self, backbone, params):
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(describe(backbone).pooled_dim, params.out_dim)

        def forward(self, crops):
            return {"z": self.head(multicrop_features(self.backbone, crops)[0])}


    @register_method("toy_cosine", ToyParams)
    class ToyCosine(Method):
        name = "toy_cosine"

        def __init__(self, backbone, params):
            super().__init__(ToyNet(backbone, params))
            self.params = params

        def loss(self, student_out, teacher_out, ctx):
            s = F.normalize(student_out["z"].chunk(ctx.n_crops)[0], dim=-1)
            t = F.normalize(teacher_out["z"].chunk(ctx.n_crops)[1], dim=-1)
            loss = self.params.weight * (2 - 2 * (s * t).sum(dim=-1)).mean()
            return loss, {"cosine": loss.detach()}
''')


@pytest.fixture
def fresh_registry(monkeypatch):
    """The built-in methods, in a registry this test may add to (restored afterwards)."""
    method_names()  # the built-in methods registered first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture
def toy(tmp_path, monkeypatch, fresh_registry):
    """The toy method's file, written and imported as any module outside the package would be."""
    path = tmp_path / "toy_method.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_method", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_method", module)
    spec.loader.exec_module(module)
    return module


def _toy_config(tmp_path, **method) -> dict:
    cfg = tiny_pretrain_dict(tmp_path / "run", run={"max_steps": 2}, optim={"epochs": 1, "warmup_epochs": 0})
    cfg["method"] = {"name": "toy_cosine", "out_dim": 4, **method}
    return cfg


def test_a_method_in_one_file_is_read_from_a_config_and_trains(toy, tmp_path):
    cfg = load_config(data=_toy_config(tmp_path, weight=0.5))
    assert isinstance(cfg.method, toy.ToyParams) and cfg.method.weight == 0.5 and cfg.method.out_dim == 4
    assert "toy_cosine" in method_names()
    trainer = Trainer(cfg)
    assert isinstance(trainer.method, toy.ToyCosine)
    before = {k: v.clone() for k, v in trainer.method.student.state_dict().items()}
    summary = trainer.train()
    assert summary.steps == 2 and math.isfinite(summary.first_loss) and math.isfinite(summary.last_loss)
    after = trainer.method.student.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "head.weight" in changed and any(k.startswith("backbone.") for k in changed)
    # the run's config and checkpoint name the toy and read back to the same parameters
    saved = torch.load(summary.checkpoint, map_location="cpu", weights_only=True)
    assert saved["config"]["method"] == {"name": "toy_cosine", "out_dim": 4, "weight": 0.5}
    assert load_config(data=saved["config"]).method == cfg.method
    assert yaml.safe_load(dump(cfg))["method"] == saved["config"]["method"]


def test_a_method_in_one_file_has_its_rules_checked_like_a_shipped_one(toy, tmp_path):
    with pytest.raises(ConfigError, match=r"^method.weight: must be > 0, got -1.0$"):
        load_config(data=_toy_config(tmp_path, weight=-1))
    with pytest.raises(ConfigError, match=r"^unknown config key 'method.wieght'; did you mean 'method.weight'\?$"):
        load_config(data=_toy_config(tmp_path, wieght=1))
    with pytest.raises(ConfigError, match=r"^method toy_cosine needs a momentum teacher: set teacher.enabled: true$"):
        load_config(data={**_toy_config(tmp_path), "teacher": {"enabled": False}})
    cfg = _toy_config(tmp_path)
    cfg["data"]["views"].update(global_crops=1, global_blur_prob=[1.0], global_solarize_prob=[0.0])
    with pytest.raises(ConfigError, match="pairs two global crops"):
        load_config(data=cfg)
    with pytest.raises(ConfigError, match=r"unknown method 'toy_cosin'; did you mean 'toy_cosine'\?"):
        load_config(data=_toy_config(tmp_path, name="toy_cosin"))


def test_an_unknown_method_name_is_refused_naming_the_choices(fresh_registry, tmp_path):
    cfg = _toy_config(tmp_path)  # the toy is not registered here
    with pytest.raises(ConfigError) as err:
        load_config(data=cfg)
    names = ", ".join(method_names())
    assert str(err.value) == f"method.name: unknown method 'toy_cosine' (choose from {names})"
    assert names.startswith("bam, byol, co_bam, co_byol, co_dino, co_mocov3, dino, lewel_b, lewel_bam, mocov3")
    with pytest.raises(ConfigError, match=r"^method: expected a mapping with a 'name' \(bam, byol, "):
        load_config(data={**cfg, "method": {"out_dim": 4}})
    with pytest.raises(ValueError, match="unknown method 'toy_cosine'"):
        build_method(type("Params", (), {"name": "toy_cosine"})(), torch.nn.Identity())


def test_registration_refuses_a_taken_name_and_a_default_name_that_differs(fresh_registry):
    from dataclasses import dataclass

    @dataclass
    class Other(MethodParams):
        name: str = "bam"

    with pytest.raises(ValueError, match=r"method 'bam' is registered twice: bam_dense.methods.bam.BAM and "):
        register_method("bam", Other)(type("Impostor", (), {}))
    with pytest.raises(ValueError, match=r"method 'other': Other.name defaults to 'bam', not 'other'"):
        register_method("other", Other)
    with pytest.raises(TypeError, match="a dataclass derived from MethodParams"):
        register_method("plain", dict)
