"""Merging methods: the registry (registry.py), the built-ins (builtin.py) and the `Merger` that runs them."""
from . import builtin, multi_builtin  # noqa: F401  (register the built-in methods; the only import-time side effect)
from .merger import MergeOutput, Merger
from .registry import Kind, Method, get_method, method_names, methods, register, register_method
from .tuning import TUNING_VERSION

__all__ = ["TUNING_VERSION", "Kind", "MergeOutput", "Merger", "Method", "get_method", "method_names", "methods",
           "register", "register_method"]
