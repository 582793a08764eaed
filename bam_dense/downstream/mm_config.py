"""An mmengine ``Config`` that formats its text once.

mmengine formats the whole config with yapf every time it needs the text: the log at start-up, the
visualizer, the runtime-info hook, the dumped config and the meta of every checkpoint. On a CPU core that is
~2 s per use for a detection config, ~10 s per runner start (measured in docs/benchmarks.md). The text is
the same while the config is unchanged: it is formatted once per content (the unformatted text, which
mmengine builds cheaply, is the key) and the result is mmengine's own, unchanged.
"""

from __future__ import annotations

from collections import OrderedDict

from mmengine.config import Config

_FORMATTED: OrderedDict[str, str] = OrderedDict()
_KEEP = 32  # formatted texts kept per process


class FormatOnceConfig(Config):
    @property
    def pretty_text(self) -> str:
        if not self._format_python_code:
            return super().pretty_text
        object.__setattr__(self, "_format_python_code", False)  # Config.__setattr__ writes into the config itself
        try:
            raw = super().pretty_text
        finally:
            object.__setattr__(self, "_format_python_code", True)
        if raw in _FORMATTED:
            _FORMATTED.move_to_end(raw)
        else:
            _FORMATTED[raw] = super().pretty_text
            while len(_FORMATTED) > _KEEP:
                _FORMATTED.popitem(last=False)
        return _FORMATTED[raw]


def format_once(cfg: Config) -> Config:
    """``cfg`` itself, formatting its text once per content from now on (copies made by the runner too)."""
    object.__setattr__(cfg, "__class__", FormatOnceConfig)  # Config.__setattr__ writes into the config itself
    return cfg
