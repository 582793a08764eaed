"""The method registry: a pretraining method registers its parameters and its class here, from its own file.

A method file (``bam_dense/methods/<name>.py``, or any module imported before the config is read) declares

* its parameters: a dataclass derived from :class:`MethodParams`, ``name`` first, then its fields with their
  defaults; what each number may be (``RANGES``) and each string (``CHOICES``), keyed by field name (``*``
  matches any part, ``"*.layers"`` the ``layers`` of every head); whether it ``NEEDS_TEACHER`` or uses
  ``TWO_VIEWS``; and its cross-field rules in ``check(cfg)``. A subclass inherits its base's rules and adds its own;
* its class, a :class:`bam_dense.methods.base.Method` built as ``cls(backbone, params)``, decorated with
  ``@register_method("name", Params)``.

The config reader (:mod:`bam_dense.core.config`) looks ``method.name`` up here and builds the parameters with
their rules; the engine builds the class. The built-in methods register when :mod:`bam_dense.methods` is imported,
which the first look-up does: the registry names that package as mmengine's ``Registry(locations=...)`` names its
modules, so core imports no method module itself and the layers still read one way.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from bam_dense.core.config import PretrainConfig

BUILTIN_METHODS = "bam_dense.methods"  # the package whose modules register the shipped methods


@dataclass
class MethodParams:
    """Base of every method's parameters (the ``method`` section of a config)."""

    name: str = ""
    # what each number may be, by field name (an option of a base class holds for its subclasses too)
    RANGES: ClassVar[dict[str, Any]] = {}  # field -> bam_dense.core.config.Range
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}  # the values a string field may take
    NEEDS_TEACHER: ClassVar[bool] = False  # refuse a config without teacher.enabled
    TWO_VIEWS: ClassVar[bool] = False  # refuse a config without exactly two global crops and no local crop

    def check(self, cfg: PretrainConfig) -> None:
        """Cross-field rules of this method, raising ``ConfigError`` (the config reader calls it after the common ones)."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type[MethodParams]
    method: type  # a bam_dense.methods.base.Method, built as method(backbone, params)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, params: type[MethodParams]):
    """Class decorator: ``method.name: <name>`` reads its section into ``params`` and trains with the class."""
    if not (isinstance(params, type) and issubclass(params, MethodParams) and dataclasses.is_dataclass(params)):
        raise TypeError(f"method {name!r}: its parameters must be a dataclass derived from MethodParams")
    if params().name != name:
        raise ValueError(f"method {name!r}: {params.__name__}.name defaults to {params().name!r}, not {name!r}")

    def decorate(cls: type) -> type:
        old = _REGISTRY.get(name)
        if old is not None and _qualname(old.method) != _qualname(cls):
            raise ValueError(f"method {name!r} is registered twice: {_qualname(old.method)} and {_qualname(cls)}")
        _REGISTRY[name] = MethodSpec(name, params, cls)
        return cls

    return decorate


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def method_names() -> list[str]:
    """Every registered method name, sorted."""
    importlib.import_module(BUILTIN_METHODS)
    return sorted(_REGISTRY)


def method_spec(name: str) -> MethodSpec | None:
    """The registered method ``name`` (``None`` when there is none)."""
    importlib.import_module(BUILTIN_METHODS)
    return _REGISTRY.get(name)
