"""Is the zoo's premise there on the validation splits? Expert vs generalist, from the models' manifests.

The premise of T^3: each expert beats the generalist on its own modality (in-domain) and the generalist
beats each expert on the other modalities. Every zoo manifest records val top-1 on every dataset of its
set, so the table needs no inference, only the manifests of one profile over some seeds.
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

Manifests = Mapping[str, Mapping[str, Any]]  # model name → manifest, for one seed


def premise_rows(zoos: Sequence[Manifests]) -> list[dict[str, Any]]:
    """One row per expert dataset: val top-1 (mean and sample std over the seeds' zoos) of the generalist and the
    expert in-domain and on the other datasets (their mean), and the differences expert − generalist."""
    if not zoos:
        raise ValueError("premise_rows needs the manifests of at least one zoo")
    experts = list(dict.fromkeys(m["dataset"] for zoo in zoos for m in zoo.values() if m["kind"] == "expert"))
    rows = []
    for d in experts:
        per_seed = []
        for zoo in zoos:
            if "generalist" not in zoo or f"expert-{d}" not in zoo:
                raise ValueError(f"a zoo lacks the generalist or expert-{d}; train it with python -m tcube.zoo")
            gen, exp = zoo["generalist"]["val"], zoo[f"expert-{d}"]["val"]
            others = [k for k in gen if ":" not in k and k != d]
            per_seed.append({
                "generalist_in": gen[d]["top1"], "expert_in": exp[d]["top1"],
                "generalist_other": statistics.fmean(gen[k]["top1"] for k in others) if others else float("nan"),
                "expert_other": statistics.fmean(exp[k]["top1"] for k in others) if others else float("nan"),
                "expert_loses_every_other": all(exp[k]["top1"] < gen[k]["top1"] for k in others),
            })
        row: dict[str, Any] = {"dataset": d, "seeds": len(per_seed)}
        for key in ("generalist_in", "expert_in", "generalist_other", "expert_other"):
            row[key] = _mean_std([s[key] for s in per_seed])
        row["gain_in"] = _mean_std([s["expert_in"] - s["generalist_in"] for s in per_seed])
        row["gain_other"] = _mean_std([s["expert_other"] - s["generalist_other"] for s in per_seed])
        row["expert_loses_every_other"] = sum(s["expert_loses_every_other"] for s in per_seed)
        row["gain_in_at_least_5"] = sum(s["expert_in"] - s["generalist_in"] >= 5 for s in per_seed)
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_premise(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: mean ± std over seeds; the last columns count the seeds where the expert gains ≥ 5 points
    in-domain, and where it is below the generalist on every other dataset (not only on their mean; a tie,
    e.g. both at the majority class, is not below)."""
    head = ["expert dataset", "in-domain: generalist", "in-domain: expert", "expert − generalist",
            "other datasets: generalist", "other datasets: expert", "expert − generalist",
            "seeds: in-domain gain ≥ 5", "seeds: expert below on every other dataset"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [r["dataset"]] + [_pm(r[k], signed=k.startswith("gain")) for k in
                                  ("generalist_in", "expert_in", "gain_in", "generalist_other", "expert_other",
                                   "gain_other")] + [f"{r['gain_in_at_least_5']} of {r['seeds']}",
                                                     f"{r['expert_loses_every_other']} of {r['seeds']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(value: tuple[float, float], signed: bool = False) -> str:
    mean, std = value
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"
