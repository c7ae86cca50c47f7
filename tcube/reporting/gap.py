"""When does adaptive merging pay? Each method against WiSE-FT(0.5), by the generalist–expert gap of its zoo.

Input: the runs of a gap sweep (scripts/gap_sweep.sh): zoos trained at several generalist shares
(`model.zoo_profile`), several seeds each. Per run, the in-domain gap is the expert's minus the generalist's
in-domain top-1 (averaged over expert modalities), and each method's headline scores are paired bootstrap
differences against WiSE-FT at α = 0.5 on the same images (tcube.reporting.uncertainty). Per profile the
table gives mean ± std over seeds and how many seeds' 95% intervals exclude 0.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

REFERENCE = "wise_ft (α=0.5)"
SCORES = ("in_domain: top-1", "base_to_novel: modality HM", "corruption: mean corrupted")


def run_gap(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], *, n_boot: int = 1000) -> dict[str, Any]:
    """One run: its in-domain gap (expert − generalist top-1) and each method's paired difference to WiSE-FT(0.5)
    per headline score: {"gap": float, "diffs": {score: {method: [diff, low, high, significant]}}}."""
    from .uncertainty import analyze

    table = {f"{e['protocol']}: {e['name']}": e for e in analyze(rows, methods, n_boot=n_boot)["headline"]}
    in_domain = table.get("in_domain: top-1")
    if in_domain is None or not in_domain["values"].get("expert") or not in_domain["values"].get("generalist"):
        raise ValueError("a gap-sweep run needs in_domain cells of the generalist and the expert")
    gap = in_domain["values"]["expert"][0] - in_domain["values"]["generalist"][0]
    diffs = {s: table[s]["diffs"].get(REFERENCE, {}) for s in SCORES if s in table}
    return {"gap": gap, "diffs": diffs}


def gap_table(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per profile (its runs' `run_gap` results): gap mean ± std, and per score and method the difference's
    mean ± std over seeds and the number of seeds whose interval excludes 0."""
    out = []
    for profile, results in runs.items():
        gaps = [r["gap"] for r in results]
        row: dict[str, Any] = {"profile": profile, "seeds": len(results), "gap": _mean_std(gaps), "scores": {}}
        for s in SCORES:
            methods = dict.fromkeys(m for r in results for m in r["diffs"].get(s, {}))
            for m in methods:
                ds = [r["diffs"][s][m] for r in results if m in r["diffs"].get(s, {})]
                row["scores"].setdefault(s, {})[m] = {"diff": _mean_std([d[0] for d in ds]),
                                                      "significant": sum(bool(d[3]) for d in ds), "n": len(ds)}
        out.append(row)
    return sorted(out, key=lambda r: r["gap"][0])


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(value: tuple[float, float], n: int) -> str:
    return f"{value[0]:+.1f} ± {value[1]:.1f}" if n > 1 else f"{value[0]:+.1f}"  # one seed: no spread to show


def render_gap(table: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> str:
    """Markdown: one table per headline score; cells are Δ vs WiSE-FT(0.5), mean ± std over seeds (the value
    alone for one seed), with [k/n] = seeds whose paired 95% interval excludes 0."""
    parts = []
    for s in SCORES:
        head = ["zoo profile", "in-domain gap (expert − generalist)"] + [m for m in methods]
        lines = [f"**{s}**: Δ vs WiSE-FT(0.5) (points)", "", "| " + " | ".join(head) + " |",
                 "|---|" + "---:|" * (len(head) - 1)]
        for row in table:
            cells = [row["profile"], _pm(row["gap"], row["seeds"])]
            for m in methods:
                v = row["scores"].get(s, {}).get(m)
                cells.append("" if v is None else f"{_pm(v['diff'], v['n'])} [{v['significant']}/{v['n']}]")
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def gap_figure(table: Sequence[Mapping[str, Any]], methods: Sequence[str]):
    """One panel per headline score: Δ vs WiSE-FT(0.5) against the in-domain gap, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import method_color

    fig, axes = plt.subplots(1, len(SCORES), figsize=(5 * len(SCORES), 4), squeeze=False)
    for ax, s in zip(axes[0], SCORES):
        for m in methods:
            pts = [(r["gap"], r["scores"][s][m]["diff"]) for r in table if m in r["scores"].get(s, {})]
            if not pts:
                continue
            ax.errorbar([g[0] for g, _ in pts], [d[0] for _, d in pts], xerr=[g[1] for g, _ in pts],
                        yerr=[d[1] for _, d in pts], marker="o", capsize=3, label=m, color=method_color(m))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks([r["gap"][0] for r in table], [f"{r['profile']}\n{r['gap'][0]:+.1f}" for r in table],
                      fontsize="small")  # which zoo each point is
        ax.set_xlabel("in-domain gap: expert − generalist top-1 (points)")
        ax.set_ylabel("Δ vs WiSE-FT(0.5) (points)")
        ax.set_title(s)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig
