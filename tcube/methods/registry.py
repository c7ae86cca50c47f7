"""One registry of merging methods: each method is a name, a kind, a typed parameter set and one pure function.

`Merger` dispatches on the kind, the harness derives its result keys from the parameter fields, and
nothing else lists method names. A user's own module registers more with `register_method` (see the
README, "Adding a method").
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Kind(str, Enum):
    """How a method turns the two models into predictions; the value is what results rows store."""

    ENDPOINT = "endpoint"        # fn(logits_gen, logits_exp, params) -> logits: one model alone
    ENSEMBLE = "ensemble"        # fn(p_gen, p_exp, params) -> logits: combines outputs, not weights
    STATIC = "static"            # fn(gen_state, exp_state, params) -> state dict: one merge for all inputs
    PER_SAMPLE = "per_sample"    # fn(p_gen, p_exp, js, params) -> λ [B]: one merged model per sample
    PER_BATCH = "per_batch"      # same λ rule; the Merger uses its batch mean (one merged model per batch)
    TUNED = "tuned"              # a `base` method whose coefficients a `grid` search picks on validation data
    # One generalist and K experts (MultiMerger; `view` is a tcube.methods.multi_merger.MultiView):
    MULTI_OUTPUT = "multi_output"          # fn(view, params) -> logits: the K + 1 models' own outputs, no merge
    MULTI_STATIC = "multi_static"          # fn(gen_state, [expert_states], params) -> state dict
    MULTI_PER_SAMPLE = "multi_per_sample"  # fn(view, params) -> w [B, K]: weights on the experts' task vectors
    MULTI_PER_BATCH = "multi_per_batch"    # same rule; the MultiMerger uses its batch mean

    @property
    def multi(self) -> bool:
        """A method for one generalist and K experts (the `mixed` protocol), not for a pair."""
        return self.value.startswith("multi_")


# Read by the Merger (how p_gen/p_exp are computed), not by the method's function; a method that
# declares this field gets JS / entropies from temperature-scaled probabilities (fit by Merger.tune).
TEMPERATURE_SCALING = "temperature_scaling"
# Old parameter names still accepted (with a DeprecationWarning): one meaning per name.
RENAMED = {"calibrate_temperature": TEMPERATURE_SCALING, "merge_scale": "scale"}


@dataclass(frozen=True)
class NoParams:
    """The parameter set of a method without parameters."""


@dataclass(frozen=True)
class Method:
    """A registered method. `params` is a frozen dataclass: its fields are the method's parameters, their
    defaults the method's defaults, and its `__post_init__` the range checks."""

    name: str
    kind: Kind
    fn: Callable | None = None                       # None for TUNED (it runs `base`)
    params: type = NoParams
    weight: Callable[[Any], float] | None = None      # constant λ to report (ENDPOINT, ENSEMBLE, STATIC)
    base: str | None = None                          # TUNED: the method it tunes
    grid: Callable[[Any], list[dict]] | None = None  # TUNED: js on val [N] -> candidate params of `base`
    doc: str = ""
    needs_domain: bool = False                       # multi: reads each image's true task (a ceiling, not a method)

    @property
    def multi(self) -> bool:
        """For one generalist and K experts: a multi kind, or a tuned method whose base is one."""
        return (get_method(self.base) if self.kind is Kind.TUNED else self).kind.multi

    @property
    def result_keys(self) -> tuple[str, ...]:
        """Every parameter that can change the results (the harness keys result cells on them)."""
        return tuple(f.name for f in dataclasses.fields(self.params))

    @property
    def coefficients(self) -> tuple[str, ...]:
        """The parameters reported in `MergeOutput.params` (temperature scaling is not a coefficient)."""
        return tuple(k for k in self.result_keys if k != TEMPERATURE_SCALING)

    def defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params())

    def make_params(self, **values: Any) -> Any:
        """The params instance for `values` (defaults for the rest); a clear ValueError for any bad key or value."""
        for old, new in RENAMED.items():
            if old in values and new in self.result_keys:
                warnings.warn(f"method parameter '{old}' is now '{new}'", DeprecationWarning, stacklevel=3)
                values[new] = values.pop(old)
        unknown = sorted(set(values) - set(self.result_keys))
        if unknown:
            raise ValueError(f"unknown method parameters {unknown} for method '{self.name}'; "
                             f"it takes {self.describe_params()}")
        hints = typing.get_type_hints(self.params)
        for key, value in values.items():
            _check_type(self.name, key, value, hints[key])
        try:
            return self.params(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"method '{self.name}': {err}") from None

    def describe_params(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.defaults().items()) or "no parameters"


def _check_type(method: str, key: str, value: Any, expected: Any) -> None:
    """bool fields take bools; int fields ints; float fields any finite real (an int stays an int, as given)."""
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool)}.get(expected, True)
    if not ok:
        raise ValueError(f"method '{method}': {key} must be {expected.__name__}, got {value!r}")
    if expected is float and not math.isfinite(float(value)):
        raise ValueError(f"method '{method}': {key} must be finite, got {value}")


_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add a method definition (checked here, so a broken plugin fails at import, not mid-run)."""
    if not isinstance(method.kind, Kind):
        raise ValueError(f"method '{method.name}': kind must be a tcube.Kind, got {method.kind!r}")
    if not dataclasses.is_dataclass(method.params) or not method.params.__dataclass_params__.frozen:
        raise ValueError(f"method '{method.name}': params must be a frozen dataclass (hashable: merges are cached)")
    if method.kind is Kind.TUNED:
        base = get_method(method.base or "")
        if base.kind is Kind.TUNED or method.grid is None:
            raise ValueError(f"tuned method '{method.name}' needs a grid and a base method that is not tuned")
        extra = set(method.result_keys) - set(base.result_keys)
        if extra:
            raise ValueError(f"tuned method '{method.name}': parameters {sorted(extra)} are not {base.name}'s")
    elif method.fn is None:
        raise ValueError(f"method '{method.name}' of kind {method.kind.value} needs a function")
    if method.name in _REGISTRY and not replace and _REGISTRY[method.name] != method:
        raise ValueError(f"method '{method.name}' is already registered; pass replace=True to redefine it")
    _REGISTRY[method.name] = method
    return method


def register_method(name: str, kind: Kind, *, params: type = NoParams, weight: Callable[[Any], float] | None = None,
                    replace: bool = False, needs_domain: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: register the decorated pure function as method `name` of `kind` (see `Kind` for signatures)."""
    def decorate(fn: Callable) -> Callable:
        register(Method(name, Kind(kind), fn, params, weight, doc=(fn.__doc__ or "").strip(),
                        needs_domain=needs_domain), replace=replace)
        return fn
    return decorate


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; choose one of {method_names(multi=None)} (a method of your own: "
                         "register it with tcube.register_method, see the README)")
    return _REGISTRY[name]


def methods(kind: Kind | None = None, *, multi: bool | None = False) -> list[Method]:
    """Registered methods in registration order (built-ins first), optionally of one kind. `multi`: False (the
    default) = methods for a generalist/expert pair, True = for one generalist and K experts, None = both."""
    return [m for m in _REGISTRY.values() if (kind is None or m.kind is kind) and (multi is None or m.multi == multi)]


def method_names(kind: Kind | None = None, *, multi: bool | None = False) -> list[str]:
    return [m.name for m in methods(kind, multi=multi)]


def effective(name: str) -> Method:
    """The method that computes the predictions: a tuned method's base, else the method itself."""
    m = get_method(name)
    return get_method(m.base) if m.kind is Kind.TUNED else m


def load_plugins(modules: str | Iterable[str] | None) -> None:
    """Import the user's modules that register methods (the harness's `plugins` key)."""
    for module in [modules] if isinstance(modules, str) else list(modules or ()):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"plugin module '{module}' (plugins=[...]) cannot be imported: {err}") from None


def split_params(params: Mapping[str, Any], names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each method's share of shared parameters: the keys it declares (so `alpha` reaches wise_ft and slerp)."""
    out = {}
    for n in names:
        keys = set(get_method(n).result_keys) | {o for o, new in RENAMED.items() if new in get_method(n).result_keys}
        out[n] = {k: v for k, v in params.items() if k in keys}
    return out
