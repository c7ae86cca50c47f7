"""Plots of a results table (tcube.analysis.load_results), shared by `tcube.eval` and the notebook.

Each function takes the DataFrame of results.jsonl rows and returns a matplotlib Figure; it never
touches pyplot's global state, so it works headless and inside notebooks alike.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .metrics import mce

DYNAMIC = ("t3", "t3_batch", "t3_cal", "dawin")


def _ordered_methods(df: pd.DataFrame) -> list[str]:
    from .methods import METHODS

    present = set(df["method"])
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def accuracy_by_method(df: pd.DataFrame) -> Figure:
    """Mean top-1 per method, one bar group per protocol (clean cells only)."""
    clean = df[df["severity"].fillna(0) == 0]
    table = clean.groupby(["method", "protocol"])["top1"].mean().unstack("protocol")
    table = table.reindex(_ordered_methods(clean))
    fig = Figure(figsize=(max(6, 0.6 * len(table)), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, table.shape[1])
    x = np.arange(len(table))
    for k, protocol in enumerate(table.columns):
        ax.bar(x + k * width - 0.4 + width / 2, table[protocol], width, label=protocol)
    ax.set_xticks(x, table.index, rotation=45, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy per method and protocol (clean)")
    ax.legend(fontsize="small")
    return fig


def mce_table(df: pd.DataFrame, reference: str = "generalist") -> pd.Series:
    """mCE per method (generalist = 100), over the datasets evaluated under corruption."""
    corr = df[(df["protocol"] == "corruption") & (df["severity"] > 0)]
    if corr.empty or reference not in set(corr["method"]):
        return pd.Series(dtype=float)
    values = {}
    for method, rows in corr.groupby("method"):
        per_dataset = []
        for dataset, sub in rows.groupby("dataset"):
            ref = corr[(corr["method"] == reference) & (corr["dataset"] == dataset)]
            err = {c: list(100 - g.sort_values("severity")["top1"]) for c, g in sub.groupby("corruption")}
            err_ref = {c: list(100 - g.sort_values("severity")["top1"]) for c, g in ref.groupby("corruption")}
            if set(err) == set(err_ref):
                per_dataset.append(mce(err, err_ref))
        if per_dataset:
            values[method] = float(np.mean(per_dataset))
    return pd.Series(values).reindex([m for m in _ordered_methods(corr) if m in values])


def mce_by_method(df: pd.DataFrame) -> Figure:
    table = mce_table(df)
    fig = Figure(figsize=(max(6, 0.6 * len(table)), 4), layout="constrained")
    ax = fig.subplots()
    ax.bar(table.index, table.values, color=["tab:gray" if m == "generalist" else "tab:blue" for m in table.index])
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_ylabel("mCE (generalist = 100)")
    ax.set_title("Mean corruption error per method (lower is better)")
    ax.tick_params(axis="x", rotation=45)
    return fig


def lambda_vs_severity(df: pd.DataFrame) -> Figure:
    """Mean λ (weight on the generalist) per corruption severity, for the per-sample/batch methods."""
    corr = df[(df["protocol"] == "corruption") & df["method"].isin(DYNAMIC)]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for method, rows in corr.groupby("method"):
        curve = rows.groupby("severity")["lambda_mean"].mean()
        ax.plot(curve.index, curve.values, marker="o", label=method)
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel("mean λ (weight on generalist)")
    ax.set_title("λ against corruption severity")
    ax.legend(fontsize="small")
    return fig


def lambda_vs_js(df: pd.DataFrame) -> Figure:
    """Per evaluated cell: mean λ against mean JS(p_gen‖p_exp), coloured by protocol."""
    rows = df[df["method"].isin(DYNAMIC) & df["js_mean"].notna()]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for protocol, sub in rows.groupby("protocol"):
        ax.scatter(sub["js_mean"], sub["lambda_mean"], s=14, alpha=0.7, label=protocol)
    ax.set_xlabel("mean JS (nats)")
    ax.set_ylabel("mean λ")
    ax.set_title("λ against generalist/expert disagreement (one point per cell)")
    ax.legend(fontsize="small")
    return fig


def routing_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over eval sets of the JS routing diagnostics, per (expert modality, protocol); the generalist's rows
    carry the uncalibrated JS every method sees (runner: `diagnostics` on each row)."""
    if "diagnostics" not in df or df["diagnostics"].isna().all():
        return pd.DataFrame()
    rows = df[(df["method"] == "generalist") & df["diagnostics"].notna()]
    keys = ["auroc_js_gen_right_exp_wrong", "spearman_js_expert_error"]
    table = pd.DataFrame([{k: d.get(k) for k in keys} for d in rows["diagnostics"]], index=rows.index, dtype=float)
    table["protocol"] = rows["protocol"]
    table["expert_data"] = rows["expert_data"].fillna("expert") if "expert_data" in rows else "expert"
    return table.groupby(["expert_data", "protocol"])[keys].mean()


def routing_auroc(df: pd.DataFrame) -> Figure:
    """AUROC of JS for 'generalist right, expert wrong' per protocol, one bar per expert modality (0.5 = chance)."""
    table = routing_table(df)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    if table.empty or "auroc_js_gen_right_exp_wrong" not in table:
        return fig
    auc = table["auroc_js_gen_right_exp_wrong"].unstack("expert_data")
    width = 0.8 / max(1, auc.shape[1])
    x = np.arange(len(auc))
    for k, expert in enumerate(auc.columns):
        ax.bar(x + k * width - 0.4 + width / 2, auc[expert], width, label=str(expert))
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, auc.index)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC of JS")
    ax.set_title("Does JS flag 'generalist right, expert wrong'? (0.5 = chance)")
    ax.legend(fontsize="small", title="expert")
    return fig


PLOTS = {"accuracy_by_method": accuracy_by_method, "mce_by_method": mce_by_method,
         "lambda_vs_severity": lambda_vs_severity, "lambda_vs_js": lambda_vs_js, "routing_auroc": routing_auroc}


def save_all(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write every plot that has data as PNG (atomically) and return the paths."""
    out_dir = Path(out_dir)
    written = []
    for name, plot in PLOTS.items():
        fig = plot(df)
        if not any(ax.has_data() for ax in fig.axes):
            continue
        tmp = out_dir / f".{name}.png.tmp"
        fig.savefig(tmp, dpi=120, format="png")
        tmp.replace(out_dir / f"{name}.png")
        written.append(out_dir / f"{name}.png")
    return written
