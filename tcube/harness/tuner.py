"""Validation tuning inside a run: load (or compute and cache) the state `Merger.tune` chooses on the
tuning data source (the expert's own val split, or the evaluated set's); never touches test data."""
from __future__ import annotations

from typing import Any, Callable

from ..io import json_safe
from ..methods.merger import Merger
from ..methods.registry import Kind, method_names
from ..methods.tuning import TUNING_VERSION
from ..protocols.base import DataRef, EvalSet
from .cache import cache_key
from .endpoints import EndpointStore


def tuning_fingerprint() -> str:
    """Tuned states depend on the tuning code and on which methods are tuned: both go into the cache key."""
    return cache_key({"tuning_version": TUNING_VERSION, "tuned": method_names(Kind.TUNED)})


class Tuner:
    def __init__(self, endpoints: EndpointStore, *, tuning_data: str, tuning_limit: int | None,
                 primary: DataRef | None, engine_fields: dict[str, Any]):
        if tuning_data not in ("own", "expert"):
            raise ValueError(f"tuning_data must be 'own' or 'expert', got {tuning_data!r}")
        self.endpoints, self.tuning_data, self.tuning_limit = endpoints, tuning_data, tuning_limit
        self.primary, self.engine_fields = primary, engine_fields

    def tune(self, es: EvalSet, info, merger: Merger, loaded: set,
             merger_for: Callable[[str, Any, DataRef, Any], tuple[Merger, set]]) -> dict[str, Any]:
        """Tune `merger` for `es` (`loaded` remembers which state it holds); returns what identifies the
        tuning view. `merger_for(role, info, data, classes)` gives a Merger of another label space."""
        data, classes = es.data, es.classes
        if self.tuning_data == "expert" and self.primary is not None:
            data = self.primary
            if es.expert == "expert_base":  # the base-class expert knows the base classes only
                from ..data.splits import base_novel_classes

                classes = tuple(base_novel_classes(data.spec.num_classes)[0])
            elif data.name != es.data.name:
                classes = None
        store, views = self.endpoints, self.endpoints.views
        fields = {**store.view_fields(info.fingerprints, info.pair.preprocess, data, "val", classes, None, 0,
                                      self.tuning_limit),
                  "kind": "tuning", **self.engine_fields, "code": tuning_fingerprint()}
        key = cache_key(fields)
        if key in loaded and not store.dist.active:
            return fields

        def choose() -> dict[str, Any]:  # on rank 0 only: the other ranks receive its choice
            if key in loaded:
                return merger.tuning_state()
            state = store.cache.load_json(key)
            if state is None:
                images, labels = views.load_view(data, "val", classes, info.pair.preprocess, limit=self.tuning_limit)
                same_space = data.name == es.data.name and classes == es.classes
                source = merger if same_space else merger_for(es.expert, info, data, classes)[0]
                source.tune(images, labels, batch_size=store.batch_size)
                state = source.tuning_state()
                store.cache.save_json(key, json_safe(state), fields)
            return state

        merger.load_tuning_state(store.dist.from_main(choose))
        loaded.clear()
        loaded.add(key)
        return fields
