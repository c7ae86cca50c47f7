"""Validation tuning: fit each model's temperature, then pick each tuned method's coefficients by val top-1.

Only validation data reaches here; test data never influences a choice.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core import coefficients as coef
from ..core.temperature import expected_calibration_error, fit_temperature
from .registry import Kind, methods

# Bump whenever the search, its grids or the temperature fit change: the harness caches tuned states
# under this number, so a bump invalidates them.
TUNING_VERSION = 1


@torch.no_grad()
def tune(merger, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Set merger.temperatures / temperature_report / tuned; returns {tuned method: chosen base params}.

    Each candidate runs with its base method's other parameters at their defaults; the first best in
    grid order wins, so the paper's defaults keep ties.
    """
    labels = labels.to(merger.device)
    cached = [(x, y, merger.endpoint_logits(x)) for x, y in zip(images.split(batch_size), labels.split(batch_size))]
    all_gen = torch.cat([e[0] for _, _, e in cached])
    all_exp = torch.cat([e[1] for _, _, e in cached])
    merger.temperatures = (fit_temperature(all_gen, labels), fit_temperature(all_exp, labels))
    merger.temperature_report = {}
    for name, logits, t in (("generalist", all_gen, merger.temperatures[0]),
                            ("expert", all_exp, merger.temperatures[1])):
        merger.temperature_report[f"temperature_{name}"] = t
        merger.temperature_report[f"ece_{name}_before"] = expected_calibration_error(logits.softmax(-1), labels)
        merger.temperature_report[f"ece_{name}_after"] = expected_calibration_error((logits / t).softmax(-1), labels)
    js_val = coef.js_divergence(all_gen.softmax(-1), all_exp.softmax(-1))

    def accuracy(method: str, params: dict) -> float:
        hits = sum(int((merger.predict(x, method, endpoint_logits=e, **params).preds == y).sum())
                   for x, y, e in cached)
        return hits / max(1, labels.numel())

    merger.tuned = {}
    for m in methods(Kind.TUNED):
        grid = m.grid(js_val)
        merger.tuned[m.name] = max(grid, key=lambda g: (accuracy(m.base, g), -grid.index(g)))
    return merger.tuned
