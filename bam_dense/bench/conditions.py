"""The conditions a step's number was measured under, read from what the step's commands ran and wrote.

After a step's commands succeed, ``bench run`` writes a ``conditions`` dict into the step's ``metrics.json``,
next to its number (:func:`record`); the report reads nothing else to decide whether a run sits beside a
published row "under the same protocol". Each value comes from the outputs the commands wrote (DAVIS's
``propagation.json``, the linear probe's and retrieval's metrics JSON, the mmengine config that ``seg test`` /
``det test`` resolved, the ``config.yaml`` detectron2 wrote, the conversion report of the encoder) or, where a command writes nothing, from the
options it was given; the encoder facts (architecture, patch size, registers) from the checkpoint it read.

Every key has words (:data:`LABELS`); a published row states the same keys in the same words
(:mod:`bam_dense.bench.published`), and :func:`differences` names each one that differs. Values are strings
(or numbers) formatted by the helpers here, one format per key, so the two sides compare by equality.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from bam_dense.core.errors import UserFacingError

LABELS = {
    "dataset": "dataset", "split": "split", "labels": "evaluation labels", "resolution": "input resolution", "protocol": "protocol",
    "arch": "architecture", "patch": "patch size", "registers": "register tokens",
    "layers": "layers fed to the head", "pooling": "pooling", "pos_embed_rule": "position-embedding rule",
    "propagation": "propagation parameters", "search": "nearest-neighbour search", "memory": "memory bank",
    "head_recipe": "head recipe", "head_epochs": "head training", "lr_grid": "learning-rate grid",
    "augmentation": "head-training augmentation", "selection": "selection rule",
    "pretrain_data": "pretraining data", "pretrain_epochs": "pretraining epochs",
    "detector": "detector", "norm": "normalisation", "schedule": "schedule",
}
# What decides the group a number is filed in: numbers that differ in one of these never share a table.
GROUP_KEYS = ("protocol", "dataset", "resolution")
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # written by bam_dense.data.synthetic.make into every generated dataset root

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


def encoder_facts(arch: str, kwargs: dict | None) -> dict:
    """``arch``, ``patch`` ("n/a" for CNNs), ``registers`` and ``family`` (vit / cnn / ...) of a timm encoder."""
    from bam_dense.convert.sources import create_meta_model
    from bam_dense.models.backbones import describe

    kwargs = dict(kwargs or {})
    name, patch = describe_arch(arch, kwargs)
    model = create_meta_model(arch, kwargs)
    facts = describe(model)
    kind = "vit" if facts.family == "eva" else facts.family
    registers = facts.registers  # DINOv2's registers, DINOv3's storage tokens (timm's Eva keeps no count)
    return {"arch": name, "patch": patch if kind == "vit" and patch else "n/a", "registers": registers, "family": kind}


def checkpoint_encoder(checkpoint: str, arch: str | None = None) -> dict:
    """:func:`encoder_facts` of the encoder a checkpoint holds (``arch``: the ``--arch`` a command was given)."""
    from bam_dense.convert import load_source
    from bam_dense.convert.sources import resolve_arch

    name, kwargs = resolve_arch(load_source(checkpoint), arch)
    return encoder_facts(name, kwargs)


def dataset_name(layout: str, root: str | Path | None) -> str:
    """The dataset a root holds: ``layout``'s name, marked synthetic where bam-dense generated it."""
    synthetic = root is not None and (Path(root) / SYNTHETIC_MARKER).is_file()
    return f"synthetic {layout} layout" if synthetic else layout


def short_side(pixels: int) -> str:
    return f"short side {pixels}"


def square(pixels: int) -> str:
    return f"{pixels} x {pixels}"


def centre_crop(pixels: int) -> str:
    return f"{pixels} (center crop)"


def propagation_words(topk: int, temperature: float, n_last_frames: int, radius: int) -> str:
    return f"top-{topk}, temperature {temperature:g}, first + {n_last_frames} previous frames, radius {radius}"


def memory_words(memory_size: int | None, augmentation_epochs: int, augment: bool, neighbours: int) -> str:
    size = "every patch" if not memory_size else f"{memory_size} patches"
    views = f"{augmentation_epochs} augmentation epochs" if augment else "no augmentation"
    return f"memory {size}, {views}, {neighbours} neighbours"


SEARCH = {"faiss": "exact", "faiss-gpu": "exact", "torch": "exact"}  # NeighbourIndex backends: all exact

DATASETS = {  # (step kind's layout) -> name a benchmark states
    "davis": "DAVIS-2017", "ade20k": "ADE20K", "voc": "Pascal VOC 2012", "imagenet": "ImageNet-1k", "coco": "COCO",
}
# The labels a classification step scores against: the val folders' own classes (ImageNet's original validation
# labels); published rows measured on another label set (ImageNet-ReaL, say) state theirs.
IMAGENET_VAL_LABELS = "ImageNet val"
MM_DATASETS = {"ADE20KDataset": "ADE20K", "PascalVOCDataset": "Pascal VOC 2012", "CocoDataset": "COCO"}


def option(command: list[str], flag: str, default=None):
    """The value of ``flag`` in a command line (the last one wins, as argparse keeps it)."""
    value = default
    for i, arg in enumerate(command[:-1]):
        if arg == flag:
            value = command[i + 1]
    return value


def read_metrics(path: Path) -> dict:
    """A step's metrics JSON, or a clear error naming the file when it is cut short or not a metrics file."""
    try:
        payload = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise UserFacingError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): the step that wrote it did "
                              "not finish; run it again (bench run re-runs a step whose metrics.json is unreadable)") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("metrics"), dict):
        raise UserFacingError(f"{path} has no \"metrics\" section: not a bam-dense metrics file")
    return payload


# ---------------------------------------------------------------------------------------------
# One recorder per step kind: (commands, step dir, metrics payload) -> conditions of the step itself
# ---------------------------------------------------------------------------------------------


def _davis(commands: list[list[str]], out: Path, payload: dict) -> dict:
    prop = payload.get("propagation") or {}
    if not prop:
        raise UserFacingError(f"{out / 'metrics.json'}: no propagation record (results/propagation.json is missing)")
    stage = option(commands[0], "--resnet-stage")
    vit = "pos_resample" in prop
    return {
        "dataset": dataset_name(DATASETS["davis"], option(commands[0], "--davis-root")),
        "split": payload.get("set", prop.get("subset")), "resolution": short_side(int(prop["resolution"])),
        "protocol": "propagation",
        "layers": "last block, normed patch tokens" if vit else f"ResNet stage {stage or 4}",
        "pos_embed_rule": prop.get("pos_resample", "n/a"),
        "propagation": propagation_words(prop["topk"], prop["temperature"], prop["n_last_frames"],
                                         prop["size_mask_neighborhood"]),
    }


def _retrieval(commands: list[list[str]], out: Path, payload: dict) -> dict:
    params = payload.get("params") or {}
    layout = "voc" if payload.get("dataset") == "voc" else "ade20k"
    return {
        "dataset": dataset_name(DATASETS[layout], payload.get("data_root")), "split": "val",
        "resolution": square(int(payload["resolution"])), "protocol": "retrieval",
        "layers": "last block, normed patch tokens", "pos_embed_rule": payload.get("pos_resample", "n/a"),
        "search": SEARCH.get(payload.get("index"), payload.get("index")),
        "memory": memory_words(params.get("memory_size"), params.get("augmentation_epochs", 0), params.get("augment", False),
                               params.get("neighbours", 0)),
    }


def _linear(commands: list[list[str]], out: Path, payload: dict) -> dict:
    recipe = payload.get("recipe") or {}
    grid = payload.get("grid") or {}
    if recipe.get("family") == "cnn":
        layers, pooling = "last stage", "global average pool"
    else:
        n = recipe.get("n_last_blocks", 1)
        layers = "last block" if n == 1 else f"last {n} blocks"
        pooling = "class token + mean of patch tokens" if recipe.get("avgpool") else "class token"
    # The probe states its own protocol (bam_dense.eval.linear_probe.protocol_name): the sources' augmented recipe,
    # or the cached centre-crop mode, reported as a protocol of its own.
    probe = payload.get("conditions") or {}
    cached = payload.get("protocol", "linear-cached-centre-crop") == "linear-cached-centre-crop"
    augmentation = ("none: cached centre-crop features" if cached
                    else f"random-resized crop {int(payload['resolution'])} + flip, every epoch")
    dataset = dataset_name(DATASETS["imagenet"], option(commands[0], "--data-root"))
    return {
        "dataset": dataset, "split": "val",
        "labels": IMAGENET_VAL_LABELS if dataset == DATASETS["imagenet"] else f"{dataset} val",
        "resolution": centre_crop(int(payload["resolution"])), "protocol": "frozen linear",
        "layers": layers, "pooling": pooling,
        "pos_embed_rule": probe.get("pos_resample") or probe.get("pos_embed_rule") or "not recorded by the step",
        "head_recipe": recipe.get("name"), "head_epochs": f"{grid.get('epochs', recipe.get('epochs'))} epochs",
        "lr_grid": ", ".join(f"{lr:g}" for lr in grid.get("learning_rates", [])),
        "augmentation": augmentation,
        "selection": payload.get("selection_rule"),
        "recipe_protocol": payload.get("protocol"),
    }


def _probe(commands: list[list[str]], out: Path, payload: dict) -> dict:
    ade = option(commands[0], "--ade-root")
    options = payload.get("options") or {}
    return {
        "dataset": dataset_name(DATASETS["ade20k"], ade) if ade else dataset_name(DATASETS["davis"],
                                                                                  option(commands[0], "--davis-root")),
        "split": "val", "resolution": square(int(options.get("image_size", option(commands[0], "--image-size", 0)))),
        "protocol": "frozen linear", "layers": "last block, normed patch tokens",
        "head_epochs": f"{options.get('steps', option(commands[0], '--steps'))} full-batch steps",
    }


def lookup(config: dict, dotted: str, missing=None):
    """``config["a"]["b"]`` for ``"a.b"``; ``missing`` where a key is absent."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def _pipeline_size(pipeline: list | None, types: tuple[str, ...], key: str):
    for t in pipeline or []:
        if isinstance(t, dict) and t.get("type") in types and t.get(key) is not None:
            return t[key]
    return None


def mm_resolution(resolved: dict) -> str:
    """The input sizes of a resolved mmseg / mmdet config in the words the benchmarks use."""
    train = lookup(resolved, "train_dataloader.dataset.pipeline") or resolved.get("train_pipeline")
    test = lookup(resolved, "test_dataloader.dataset.pipeline") or resolved.get("test_pipeline")
    test_scale = _pipeline_size(test, ("Resize",), "scale")
    crop = _pipeline_size(train, ("RandomCrop",), "crop_size")
    scales = _pipeline_size(train, ("RandomChoiceResize",), "scales")
    mode = lookup(resolved, "model.test_cfg.mode")
    if crop is not None:  # segmentation
        c = crop[0] if isinstance(crop, (list, tuple)) else crop
        words = f"{c} crops; test short side {min(test_scale) if test_scale else '?'}"
        if mode == "slide":
            stride = lookup(resolved, "model.test_cfg.stride") or ["?"]
            window = lookup(resolved, "model.test_cfg.crop_size") or ["?"]
            return f"{words}, sliding window {window[0]}/{stride[0]}"
        return f"{words}, whole image"
    if scales:  # detection, multi-scale training
        shorts = [min(s) for s in scales]
        return f"multi-scale train {min(shorts)}-{max(shorts)}, test {min(test_scale)} (max {max(test_scale)})"
    if test_scale:
        return f"test {min(test_scale)} (max {max(test_scale)})"
    return "not recorded by the config"


def _mm(commands: list[list[str]], out: Path, payload: dict) -> dict:
    resolved = payload.get("resolved_config") or {}
    backbone = lookup(resolved, "model.backbone") or {}
    dataset = MM_DATASETS.get(lookup(resolved, "test_dataloader.dataset.type") or "", "not recorded")
    root = lookup(resolved, "test_dataloader.dataset.data_root")
    indices = backbone.get("out_indices")
    return {
        "dataset": dataset_name(dataset, root), "split": "val", "resolution": mm_resolution(resolved),
        "protocol": "frozen linear" if backbone.get("type") == "FrozenTimmEncoder" else "fine-tuned",
        "layers": "not recorded" if indices is None else "blocks " + "/".join(str(i) for i in indices)
        if isinstance(indices, (list, tuple)) else str(indices),
    }


DETECTRON2_CONFIG = "config.yaml"  # detectron2's default_setup writes the full config that ran into OUTPUT_DIR


class _Detectron2Loader(yaml.SafeLoader):
    """``yaml.safe_load`` of a written detectron2 config: LazyConfig.save writes with ``yaml.dump``, so tuples (and
    objects such as a ``functools.partial``) carry python tags. Tuples are read as lists; any other python object
    only as its tag's name, never constructed."""


def _python_tag(loader, suffix, node):
    if suffix == "tuple":
        return loader.construct_sequence(node, deep=True)
    return f"!!python/{suffix}"


_Detectron2Loader.add_multi_constructor("tag:yaml.org,2002:python/", _python_tag)


def read_detectron2_config(out: Path) -> dict:
    """The config a detectron2 step ran (``<OUTPUT_DIR>/config.yaml``), read without detectron2."""
    path = Path(out) / DETECTRON2_CONFIG
    if not path.is_file():
        raise UserFacingError(f"{path} is missing: detectron2 writes the config it ran there; without it the step's "
                              "conditions cannot be recorded")
    try:
        config = yaml.load(path.read_text(), Loader=_Detectron2Loader)  # a SafeLoader: constructs no object
    except yaml.YAMLError as err:
        raise UserFacingError(f"{path} is not a readable YAML config: {err}") from err
    if not is_detectron2_config(config):
        raise UserFacingError(f"{path} is not a detectron2 config (no MODEL section, no LazyConfig dataloader)")
    return config


def is_detectron2_config(config: dict | None) -> bool:
    """A detectron2 config (YAML: upper-case sections; LazyConfig: ``dataloader``), not an mmengine one."""
    return isinstance(config, dict) and ("MODEL" in config or "dataloader" in config)


def _short(target) -> str:
    return str(target or "?").rsplit(".", 1)[-1]


def d2_resolution(config: dict) -> str:
    """The input sizes of a detectron2 config in the words the benchmarks use (those of :func:`mm_resolution`)."""
    if "MODEL" in config:
        inp = config.get("INPUT") or {}
        train = inp.get("MIN_SIZE_TRAIN", 800)
        train = list(train) if isinstance(train, (list, tuple)) else [train]
        if len(set(train)) == 1:
            words = f"train {train[0]}"
        elif inp.get("MIN_SIZE_TRAIN_SAMPLING", "choice") == "range":
            words = f"range-sampled train {min(train)}-{max(train)}"
        else:
            words = f"multi-scale train {min(train)}-{max(train)}"
        return f"{words}, test {inp.get('MIN_SIZE_TEST', 800)} (max {inp.get('MAX_SIZE_TEST', 1333)})"
    for aug in lookup(config, "dataloader.train.mapper.augmentations") or []:
        if isinstance(aug, dict) and _short(aug.get("_target_")) == "ResizeScale":
            return f"large-scale jitter, {aug.get('target_height')} x {aug.get('target_width')}"
    return "not recorded by the config"


def _detectron2(commands: list[list[str]], out: Path, payload: dict) -> dict:
    config = read_detectron2_config(out)
    # kept with the number, as seg/det keep their resolved mmengine config: the report checks recipes on it
    payload["resolved_config"] = config
    root = option(commands[0], "--coco-root") or (out / "data" / "coco" if (out / "data" / "coco").is_dir() else None)
    conditions = {"dataset": dataset_name(DATASETS["coco"], root), "split": "val", "resolution": d2_resolution(config),
                  "protocol": "fine-tuned"}
    if "MODEL" in config:
        model, solver = config["MODEL"], config.get("SOLVER") or {}
        names = [n for n in (config.get("DATASETS") or {}).get("TEST", []) if "coco" not in n.lower()]
        if names:
            conditions["dataset"] = ", ".join(names)
        box = model.get("ROI_BOX_HEAD") or {}
        heads = (model.get("ROI_HEADS") or {}).get("NAME", "?")
        head_words = f", box head {box.get('NUM_CONV', 0)} conv + {box.get('NUM_FC', 0)} fc" \
            if heads == "StandardROIHeads" else ""
        conditions.update({
            "layers": "stages " + "/".join((model.get("RESNETS") or {}).get("OUT_FEATURES", [])),
            "detector": f"{model.get('META_ARCHITECTURE', '?')}{' with masks' if model.get('MASK_ON') else ''}: "
                        f"{(model.get('BACKBONE') or {}).get('NAME', '?')}, {heads}{head_words}",
            "norm": ", ".join(f"{part} {(model.get(key) or {}).get('NORM') or 'none'}" for part, key in (
                ("backbone", "RESNETS"), ("FPN", "FPN"), ("box head", "ROI_BOX_HEAD"), ("mask head", "ROI_MASK_HEAD"))
                if key in model),
            "schedule": f"{solver.get('MAX_ITER')} iterations at batch {solver.get('IMS_PER_BATCH')}, lr "
                        f"{solver.get('BASE_LR')}, steps {'/'.join(str(x) for x in solver.get('STEPS', []))}",
        })
    else:  # LazyConfig (ViTDet)
        backbone = lookup(config, "model.backbone") or {}
        net = backbone.get("net") or {}
        conditions.update({
            "detector": f"{_short(lookup(config, 'model._target_'))}: {_short(backbone.get('_target_'))} on "
                        f"{_short(net.get('_target_'))}",
            "schedule": f"{lookup(config, 'train.max_iter')} iterations at batch "
                        f"{lookup(config, 'dataloader.train.total_batch_size')}",
        })
    return conditions


RECORDERS = {"davis": _davis, "retrieval": _retrieval, "linear": _linear, "probe": _probe, "seg": _mm, "det": _mm,
             "detectron2": _detectron2}


def _conversion_encoder(out: Path) -> dict | None:
    """Encoder facts from the conversion report seg/det/detectron2 wrote in the work dir (the encoder that ran)."""
    for report in sorted(out.glob("pretrained/*.report.json")):
        data = json.loads(report.read_text())
        if data.get("arch"):
            return encoder_facts(data["arch"], data.get("model_kwargs"))
    return None


def record(kind: str, commands: list[list[str]], out: Path, checkpoint: str, run_facts: dict) -> dict:
    """The conditions of a finished step, written into its ``metrics.json`` (atomically) and returned.

    ``run_facts``: what the run states about its pretraining (``pretrain_data``, ``pretrain_epochs``)."""
    from bam_dense.core.atomic import atomic_write_text

    path = out / "metrics.json"
    payload = read_metrics(path)
    conditions = RECORDERS[kind](commands, out, payload) if kind in RECORDERS else {}
    encoder = _conversion_encoder(out) if kind in ("seg", "det", "detectron2") else None
    if encoder is None:
        encoder = checkpoint_encoder(checkpoint, option(commands[0], "--arch"))
    conditions.update({k: v for k, v in encoder.items() if k != "family"})
    conditions.update({k: v for k, v in run_facts.items() if v is not None})
    payload["conditions"] = {k: v for k, v in conditions.items() if v is not None}
    atomic_write_text(path, json.dumps(payload, indent=1))
    return payload["conditions"]


def _same(a, b) -> bool:
    return str(a).strip().lower() == str(b).strip().lower()


def differences(published: dict, recorded: dict, run: str) -> tuple[list[str], list[str]]:
    """(each condition the published row states that ``recorded`` does not equal, in words; the conditions the
    run recorded that the published row does not state). A condition the run did not record is a difference."""
    out = []
    for key, value in published.items():
        label = LABELS.get(key, key)
        if key not in recorded:
            out.append(f"{label} not recorded for {run}")
        elif not _same(value, recorded[key]):
            out.append(f"{label} {value} (published) vs {recorded[key]} ({run})")
    unstated = [LABELS.get(k, k) for k in recorded if k not in published and k in LABELS]
    return out, unstated
