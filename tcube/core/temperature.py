"""Temperature scaling on cached validation logits (no model backprop) and expected calibration error."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The scalar T minimizing validation NLL of softmax(logits / T), by bounded 1-D search on log T."""
    from scipy.optimize import minimize_scalar

    logits, labels = logits.detach().double(), labels.detach().long().view(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"need logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or Inf")

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> float:
    """Top-label ECE in percent (torchmetrics, equal-width bins)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(probs.float(), labels.long().view(-1), num_classes=probs.shape[1],
                                              n_bins=n_bins, norm="l1")) * 100


def temperature_report(logits: dict[str, torch.Tensor], labels: torch.Tensor,
                       temperatures: dict[str, float]) -> dict[str, float]:
    """Per model name: its temperature and ECE before / after dividing its logits by it (keys as in
    Merger.calibration_report, so validation and test reports read alike)."""
    out: dict[str, float] = {}
    for name, value in logits.items():
        t = float(temperatures[name])
        out[f"temperature_{name}"] = t
        out[f"ece_{name}_before"] = expected_calibration_error(value.float().softmax(-1), labels)
        out[f"ece_{name}_after"] = expected_calibration_error((value.float() / t).softmax(-1), labels)
    return out
