"""Plots of a results table (tcube.reporting.analysis.load_results), shared by `tcube.eval` and the notebook.

Each plot function takes the DataFrame of results.jsonl rows and returns a matplotlib Figure; it never
touches pyplot's global state, so it works headless and inside notebooks alike. The tables (headline_table,
mce_table, routing_table) hold no score definitions of their own: they read summary.json's point scores
(tcube.reporting.report.point_summary) and routing diagnostics (tcube.reporting.tables), per run folder, and
average over run folders when the DataFrame holds several runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..io import atomic_write
from .results import ADAPTIVE, LEGACY_KINDS, method_order, methods_of_kind

BUILT_IN = list(LEGACY_KINDS)  # fixed colours for the built-in methods (rows of any age)


def _records(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows as results.jsonl dicts again: a missing value (NaN) becomes None, as in the file."""
    return [{k: (None if _missing(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _ordered_methods(df: pd.DataFrame) -> list[str]:
    return method_order({"method": m} for m in df["method"]) if len(df) else []


def _adaptive(df: pd.DataFrame) -> list[str]:
    """Methods whose λ is computed from the test inputs (kind per_sample / per_batch, from the rows)."""
    return methods_of_kind(_records(df[["method", "method_kind"]] if "method_kind" in df else df[["method"]]),
                           *ADAPTIVE)


def _per_run(df: pd.DataFrame):
    """(run folder, its rows) for each run in the DataFrame (one group when it has no run_dir column)."""
    if "run_dir" not in df or df["run_dir"].nunique() <= 1:
        return [(None, _records(df))]
    return [(run, _records(sub)) for run, sub in df.groupby("run_dir", sort=False)]


def method_color(method: str):
    """One fixed colour per method (tab20 in the built-in methods' order): 14 methods outrun the 10-colour cycle."""
    from matplotlib import colormaps

    index = BUILT_IN.index(method) if method in BUILT_IN else len(BUILT_IN) + sum(map(ord, method)) % 6
    return colormaps["tab20"](index % 20)


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


def mce_table(df: pd.DataFrame) -> pd.Series:
    """summary.json's mCE per method (generalist = 100; mean over expert modalities, then over run folders)."""
    from .report import point_summary

    per_run = [point_summary(rows).get("mce") or {} for _, rows in _per_run(df)]
    values = {m: float(np.mean(v)) for m in _ordered_methods(df)
              if (v := [p[m] for p in per_run if p.get(m) is not None])}
    return pd.Series(values, dtype=float)


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
    corr = df[(df["protocol"] == "corruption") & df["method"].isin(_adaptive(df))]
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
    rows = df[df["method"].isin(_adaptive(df)) & df["js_mean"].notna()]
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
    """summary.json's routing diagnostics (tcube.reporting.tables.diagnostics_table): per (expert modality,
    protocol), the mean over eval sets of JS's AUROC and Spearman ρ; averaged over run folders."""
    from .tables import diagnostics_table

    keys = ["auroc_js_gen_right_exp_wrong", "spearman_js_expert_error"]
    if "diagnostics" not in df or df["diagnostics"].isna().all():
        return pd.DataFrame()
    entries = [{"expert_data": "expert" if d["expert_data"] is None else d["expert_data"], "protocol": d["protocol"],
                **{k: d[k] for k in keys}}
               for _, rows in _per_run(df) for d in diagnostics_table(rows, [])
               if d["expert_data"] != "all modalities"]
    if not entries:
        return pd.DataFrame()
    table = pd.DataFrame(entries).astype({k: float for k in keys})
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


def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean top-1 (%) of the clean cells, method × protocol, from summary.json's point scores: in_domain top-1,
    base_to_novel top-1 (base and novel cells), corruption clean top-1; mean over experts, then run folders."""
    from .report import point_summary

    clean = {"in_domain": "top1", "base_to_novel": "top1", "corruption": "clean_top1"}
    per_run = [point_summary(rows)["protocols"] for _, rows in _per_run(df)]
    protocols = sorted({p for run in per_run for p in run if p in clean})
    table = pd.DataFrame({p: {m: np.mean(v) for m in _ordered_methods(df)
                              if (v := [run[p][clean[p]][m] for run in per_run
                                        if p in run and run[p][clean[p]].get(m) is not None])}
                          for p in protocols}, dtype=float)
    table = table.dropna(axis=1, how="all")  # a protocol without clean cells (corruption rows of severity > 0 only)
    table.index.name, table.columns.name = "method", "protocol"
    return table.reindex([m for m in _ordered_methods(df) if m in table.index])


def accuracy_vs_severity(df: pd.DataFrame) -> Figure:
    """Mean top-1 per corruption severity (0 = the clean set), one line per method."""
    corr = df[df["protocol"] == "corruption"]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    adaptive = _adaptive(corr) if not corr.empty else []
    for method in _ordered_methods(corr) if not corr.empty else []:
        curve = corr[corr["method"] == method].groupby("severity")["top1"].mean()
        ax.plot(curve.index, curve.values, marker="o", label=method, ls="--" if method not in adaptive else "-",
                color=method_color(method))
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel("top-1 (%), mean over corruptions")
    ax.set_title("Accuracy against corruption severity")
    if ax.has_data():
        ax.legend(fontsize="small", ncol=2)
    return fig


def _lambdas(rows: pd.DataFrame) -> np.ndarray:
    """Per-image λ of these rows where results.jsonl has them (lambda_per_image), else each cell's mean λ."""
    if "lambda_per_image" in rows and rows["lambda_per_image"].notna().all():
        return np.concatenate([np.asarray(v, dtype=float) for v in rows["lambda_per_image"]]) if len(rows) else np.array([])
    return rows["lambda_mean"].to_numpy(dtype=float)


def lambda_distribution(df: pd.DataFrame) -> Figure:
    """Spread of λ (weight on the generalist) per protocol: one box per (protocol, sample-wise method),
    over every test image (older runs without per-image λ: over the cells' mean λ)."""
    rows = df[df["method"].isin(_adaptive(df)) & df["lambda_mean"].notna()]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    protocols = sorted(rows["protocol"].unique()) if not rows.empty else []
    methods = _adaptive(rows) if not rows.empty else []
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        data = [_lambdas(rows[(rows["protocol"] == p) & (rows["method"] == method)]) for p in protocols]
        keep = [i for i, d in enumerate(data) if len(d)]
        if not keep:
            continue
        box = ax.boxplot([data[i] for i in keep], positions=[i + (k - (len(methods) - 1) / 2) * width for i in keep],
                         widths=width * 0.9, patch_artist=True, manage_ticks=False, showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(method_color(method))
        ax.plot([], [], color=method_color(method), lw=6, label=method)  # legend handle
    ax.set_xticks(range(len(protocols)), protocols)
    ax.set_ylabel("λ (weight on the generalist)")
    ax.set_title("λ distribution per protocol (whiskers: 1.5 IQR)")
    if methods:
        ax.legend(fontsize="small")
    return fig


def tradeoff(df: pd.DataFrame) -> Figure:
    """Per expert modality: in-domain top-1 (x) against mean novel-modality top-1 (y), one marker per method.

    In-domain = protocol in_domain (else base_to_novel's base role); novel = base_to_novel split=modality,
    role novel, averaged over the novel datasets. Upper right is better on both.
    """
    clean = df[df["severity"].fillna(0) == 0].copy()
    clean["expert"] = clean.get("expert_data", "expert")  # rows before data=all existed name no expert
    clean["expert"] = clean["expert"].fillna("expert")
    b2n = clean[(clean["protocol"] == "base_to_novel") & (clean.get("split", "") == "modality")]
    ind = clean[clean["protocol"] == "in_domain"]
    if ind.empty and not b2n.empty:
        ind = b2n[b2n["role"] == "base"]
    x = ind.groupby(["expert", "method"])["top1"].mean()
    y = b2n[b2n["role"] == "novel"].groupby(["expert", "method"])["top1"].mean() if not b2n.empty else x.iloc[:0]
    both = pd.concat({"in_domain": x, "novel": y}, axis=1).dropna()
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    experts = sorted(both.index.get_level_values("expert").unique()) if not both.empty else []
    markers = "osD^vP*X"
    for method in (_ordered_methods(both.reset_index()) if not both.empty else []):
        sub = both.xs(method, level="method")
        for expert, (xi, yi) in sub.iterrows():
            ax.scatter(xi, yi, color=method_color(method), marker=markers[experts.index(expert) % len(markers)], s=40,
                       label=method if expert == sub.index[0] else None)
    for j, expert in enumerate(experts):  # marker legend entries: which shape is which expert
        ax.scatter([], [], color="k", marker=markers[j % len(markers)], label=f"expert: {expert}")
    ax.set_xlabel("in-domain top-1 (%)")
    ax.set_ylabel("novel-modality top-1 (%), mean")
    ax.set_title("In-domain vs novel trade-off per expert modality")
    if experts:
        ax.legend(fontsize="x-small", ncol=2)
    return fig


PLOTS = {"accuracy_by_method": accuracy_by_method, "mce_by_method": mce_by_method,
         "lambda_vs_severity": lambda_vs_severity, "lambda_vs_js": lambda_vs_js, "routing_auroc": routing_auroc,
         "accuracy_vs_severity": accuracy_vs_severity, "lambda_distribution": lambda_distribution,
         "tradeoff": tradeoff}


def save_all(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write every plot that has data as PNG (atomically) and return the paths."""
    out_dir = Path(out_dir)
    written = []
    for name, plot in PLOTS.items():
        fig = plot(df)
        if not any(ax.has_data() for ax in fig.axes):
            continue
        atomic_write(out_dir / f"{name}.png", lambda tmp, fig=fig: fig.savefig(tmp, dpi=120, format="png"))
        written.append(out_dir / f"{name}.png")
    return written


def ceiling_curve(entries: list[dict]) -> Figure:
    """Per-sample ceiling (summary.json's `ceiling`): top-1 of the static merge vs λ, one panel per expert and
    protocol view, with the per-sample oracle (dashed) and the adaptive methods' top-1 (dotted) as lines."""
    fig = Figure(figsize=(4.5 * max(1, min(len(entries), 3)), 3.6 * max(1, -(-len(entries) // 3))),
                 layout="constrained")
    for k, e in enumerate(entries):
        ax = fig.add_subplot(max(1, -(-len(entries) // 3)), min(len(entries), 3), k + 1)
        ax.plot(e["grid"], e["curve"], marker=".", color="0.2", label="static merge")
        ax.axhline(e["oracle"], color="black", linestyle="--", linewidth=1, label="per-sample oracle")
        ax.plot([e["static_lambda"]], [e["static"]], marker="*", markersize=10, color="black", linestyle="none",
                label="best static")
        for m, v in e["methods"].items():
            ax.axhline(v["top1"], color=method_color(m), linestyle=":", linewidth=1.2, label=m)
        ax.set_xlabel("λ (weight on the generalist)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{e['expert_data']}: {e['protocol']} ({e['view']})", fontsize="small")
        ax.legend(fontsize="x-small")
    return fig


def save_ceiling(entries: list[dict], out_dir: str | Path) -> list[Path]:
    """ceiling.png when the run has per-sample ceiling data (none otherwise)."""
    if not entries:
        return []
    fig = ceiling_curve(entries)
    path = Path(out_dir) / "ceiling.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return [path]
