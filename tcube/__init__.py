"""tcube: test-time task-adaptive merging (T^3) of medical vision-language models."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Kind", "MergeOutput", "Merger", "Method", "ModelPair", "load_model", "load_pair", "merge_and_predict",
           "method_names", "register_method"]

# Loaded on first use, so that `import tcube.reporting` (results, scores, reports) loads no model code.
_LAZY = {"merge_and_predict": ".api", "Kind": ".methods", "MergeOutput": ".methods", "Merger": ".methods",
         "Method": ".methods", "method_names": ".methods", "register_method": ".methods",
         "ModelPair": ".models", "load_model": ".models", "load_pair": ".models"}

if TYPE_CHECKING:
    from .api import merge_and_predict
    from .methods import Kind, MergeOutput, Merger, Method, method_names, register_method
    from .models import ModelPair, load_model, load_pair


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
