"""The harness's side of `zoo:` model specs: which datasets a run configures, and the zoo they select.

A run's zoo generalist trains on every dataset the run configures (the expert datasets of `data`, and
`protocol.datasets`) plus the built-in ones present in the data root, so a new dataset needs only its
data config. That set keys the zoo folder and, when it is not the built-in four, the cell identities.
tcube.zoo is imported only when a spec names it.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..data.registry import get_dataset_spec
from ..protocols import resolve_data
from ..protocols.base import DataRef, spec_from_config


def uses_zoo(model: dict[str, Any]) -> bool:
    return any(str(v).startswith("zoo:") for k, v in model.items() if k != "zoo_profile" and v)


def run_datasets(s: dict[str, Any], primaries: Sequence[DataRef]) -> list:
    """Specs of every dataset the run configures whose file is here (multi-label ones cannot be trained on).

    A registered dataset trains with its registry prompts even when the run evaluates it with others: trying
    other prompts must not retrain the zoo (nor change the cell keys of runs that did so before)."""
    specs = {p.name: _for_training(p.spec) for p in primaries}
    for entry in s["protocol"].get("datasets") or []:
        spec = spec_from_config(entry)
        if spec.name in specs or spec.is_multi_label:
            continue
        try:
            specs[spec.name] = _for_training(resolve_data(entry, s["data"]["root"], s["data"]["size"]).spec)
        except FileNotFoundError:  # base_to_novel skips it too, and says so
            continue
    return list(specs.values())


def _for_training(spec):
    try:
        return get_dataset_spec(spec.name)
    except ValueError:  # described by its data config alone
        return spec


def open_zoo(settings: dict[str, Any], primary: DataRef, datasets: Sequence) -> Any:
    """The tcube.zoo.Zoo a part's `zoo:` specs resolve in (its data root is the expert dataset's folder)."""
    try:
        from tcube.zoo import Zoo
    except ImportError as err:
        raise ValueError(f"model specs 'zoo:...' need tcube.zoo, which is not available ({err}); use model=local "
                         "model.generalist=local-dir:/path model.expert=local-dir:/path") from None
    return Zoo(settings["model"]["zoo_profile"], settings["seed"], str(primary.path.parent), datasets)
