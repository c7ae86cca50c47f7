"""tcube's static merges side by side with FusionBench 0.2.33 and mergekit 0.1.5 on the same state dicts.

Prints max |Δ| per case: "agree" rows map the parameters by the conventions (e.g. slerp t = 1 − alpha)
and must match to float32 rounding; "differs" rows measure a convention a user coming from those
tools would trip on (they are documented in ``tcube/core/merging.py`` and the README).

Getting the references (no heavy dependencies are installed or imported):

    pip download --no-deps fusion-bench==0.2.33 mergekit==0.1.5 -d /tmp/refwheels
    python scripts/compare_merges.py --refs /tmp/refwheels            # or TCUBE_MERGE_REFS=/tmp/refwheels
    python scripts/compare_merges.py --refs /tmp/refwheels --write-fixture tests/fixtures/merge_conventions.json

The wheels are imported straight from the .whl files (zip imports), never installed:
- mergekit: ``mergekit.merge_methods`` imports with torch + pydantic only; its registered ``ties``,
  ``dare_linear``, ``task_arithmetic``, ``linear`` and ``slerp`` methods are called through its own
  ``merge_tensors`` / ``merge_state_dicts``.
- FusionBench: importing ``fusion_bench`` pulls lightning, hydra, transformers, ... so the package
  ``__init__`` files are *not* run: empty package shells (``fusion_bench``, ``fusion_bench.utils``,
  ``fusion_bench.method`` and its ``ties_merging`` / ``dare`` / ``slerp`` subpackages) are put in
  ``sys.modules`` with ``__path__`` pointing into the wheel, and only the files holding the pure
  functions are loaded: ``utils/state_dict_arithmetic.py``, ``method/ties_merging/ties_merging_utils.py``,
  ``method/dare/utils.py``, ``method/slerp/slerp_utils.py``. Their algorithm classes'
  ``run`` bodies (model pools, profiling) are reproduced line for line around those functions
  (see the ``fb_*`` helpers). ``sys.modules`` and ``sys.path`` are restored afterwards.

mergekit's DARE draws its mask with ``torch.bernoulli``; to compare the rescaling alone, that call
is replaced (mock) by the mask tcube's ``dare`` drew (recovered from tcube's output). FusionBench's
DARE draws ``torch.rand_like(τ) > p`` from the global RNG: with ``torch.manual_seed(seed)`` and the
keys in sorted order it draws the same mask as ``tcube.dare(seed=seed)`` for one expert, unpatched.

The test ``tests/test_conventions.py`` runs the same comparison when the wheels are found, and
otherwise checks tcube against the reference outputs recorded in the fixture by ``--write-fixture``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor

from tcube.core import merging

FB_VERSION = "0.2.33"
MK_VERSION = "0.1.5"
DEFAULT_REFS = "/tmp/refwheels"
AGREE_TOL = 1e-6  # float32 rounding of values of order 1-10
DIFFER_MIN = 1e-3  # a documented convention difference must still show

SD = dict[str, Tensor]

# Parameters (tcube's conventions). Densities are chosen so that the trimmed counts coincide:
# mergekit keeps ⌊d·n⌋, tcube ⌈d·n⌉ -> equal when d·n is an integer (D_INT, all numels are multiples
# of 4); FusionBench keeps ⌊d·n⌋ + 1 -> equal to ⌈d·n⌉ when d·n is not an integer (D_FRAC).
ALPHA = 0.3  # slerp / wise_ft: weight on the generalist
SCALE = 0.7  # task arithmetic / TIES / DARE scale
D_INT = 0.25
D_FRAC = 0.33
DROP = 0.5
SEED = 3


# ----------------------------------------------------------------------------- inputs
def make_inputs() -> dict[str, SD]:
    """gen, two experts (several shapes, incl. a scalar like logit_scale); a TIES cancellation case;
    a zero-norm tensor for slerp. Keys in sorted order (FusionBench flattens and draws in that order)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (6, 8), "b.bias": (12,), "c.conv": (2, 3, 4), "d.logit_scale": ()}
    gen = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    e1 = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in gen.items()}
    e2 = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in gen.items()}
    # TIES: entry 0 is the largest |τ| of both task vectors, with opposite signs -> trimmed sum 0.
    base = torch.randn(8, generator=g)
    tau1 = torch.tensor([3.0, 2.0, 1.0, 0.1, -0.2, 0.3, -0.4, 0.05])
    tau2 = torch.tensor([-3.0, -1.5, 0.2, 0.6, 0.1, -0.3, 0.15, 2.5])
    zero = {"z": torch.zeros(6)}
    zero_exp = {"z": torch.randn(6, generator=g)}
    return {
        "gen": gen, "e1": e1, "e2": e2,
        "cancel_base": {"t": base}, "cancel_e1": {"t": base + tau1}, "cancel_e2": {"t": base + tau2},
        "zero_gen": zero, "zero_exp": zero_exp,
    }


def _only(sd: SD, keys: list[str]) -> SD:
    return {k: sd[k] for k in keys}


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    id: str
    method: str
    reference: str  # "FusionBench" | "mergekit"
    setting: str  # the reference call, in its own parameters
    kind: str  # "agree" | "differs"
    tcube: Callable[[dict[str, SD]], SD]
    ref: Callable[[types.SimpleNamespace, dict[str, SD]], SD]


def _dare_masks(x: dict[str, SD]) -> SD:
    """The keep-mask tcube's dare drew (one expert): where its output moved off the base."""
    out = merging.dare(x["gen"], [x["e1"]], drop=DROP, scale=1.0, seed=SEED)
    return {k: (out[k] - x["gen"][k]) != 0 for k in out}


# --- FusionBench: the algorithms' run() bodies around the pure functions -----------------------
def fb_task_arithmetic(fb, ptm: SD, fts: list[SD], scaling_factor: float) -> SD:
    # TaskArithmeticAlgorithm -> task_arithmetic_merge(), on state dicts
    sda = fb.sda
    tv = None
    for ft in fts:
        d = sda.state_dict_sub(ft, ptm)
        tv = d if tv is None else sda.state_dict_add(tv, d)
    tv = sda.state_dict_mul(tv, scaling_factor)
    return dict(sda.state_dict_add(ptm, tv))


def fb_ties(fb, ptm: SD, fts: list[SD], *, scaling_factor: float, threshold: float, merge_func: str,
            per_tensor: bool) -> SD:
    # TiesMergingAlgorithm.run: flatten (sorted keys), ties_merging, unflatten. per_tensor=True runs it
    # on each key as its own one-tensor "model" (what tcube does); False is FusionBench's own behaviour.
    tu = fb.ties

    def run(p: SD, f: list[SD]) -> SD:
        flat_ft = torch.vstack([tu.state_dict_to_vector(c, []) for c in f])
        flat_ptm = tu.state_dict_to_vector(p, [])
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
            merged_tv = tu.ties_merging(flat_ft - flat_ptm, reset_thresh=threshold, merge_func=merge_func)
        return dict(tu.vector_to_state_dict(flat_ptm + scaling_factor * merged_tv, p, remove_keys=[]))

    if not per_tensor:
        return run(ptm, fts)
    out: SD = {}
    for k in ptm:
        out.update(run({k: ptm[k]}, [{k: f[k]} for f in fts]))
    return out


def fb_dare(fb, ptm: SD, fts: list[SD], *, scaling_factor: float, sparsity_ratio: float, seed: int) -> SD:
    # DareTaskArithmetic.run (only_on_linear_weights=False, rescale=True) with the global RNG seeded
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tvs = [fb.sda.state_dict_sub(ft, ptm) for ft in fts]
        for tv in tvs:
            fb.dare.module_random_drop_(tv, sparsity_ratio, rescale=True)
    total = fb.sda.state_dict_sum(tvs)
    return {k: ptm[k] + total[k] * scaling_factor for k in ptm}


def fb_slerp(fb, t: float, primary: SD, secondary: SD) -> SD:
    # slerp_on_state_dicts(t, primary, secondary): per key slerp(t, v0, v1)
    return {k: fb.slerp.slerp(t, primary[k], secondary[k]) for k in primary}


# --- mergekit: its registered methods through its own API ---------------------------------------
def mk_merge(mk, method: str, models: dict[str, SD], base: str, parameters: dict) -> SD:
    return mk.merge_state_dicts(models, mk.get(method), parameters=parameters, base=base)


def mk_dare(mk, x: dict[str, SD], parameters: dict) -> SD:
    """dare_linear with the Bernoulli mask replaced by the one tcube drew (so only the rescale differs)."""
    masks = _dare_masks(x)
    out: SD = {}
    for k in x["gen"]:
        def fake_bernoulli(p: Tensor, *a, _m=masks[k], _k=k, **kw) -> Tensor:
            if p.shape != _m.shape:
                raise RuntimeError(f"unexpected bernoulli shape {tuple(p.shape)} for {_k}")
            return _m.to(p.dtype)

        with mock.patch.object(torch, "bernoulli", fake_bernoulli):
            out[k] = mk.merge_tensors([x["gen"][k], x["e1"][k]], mk.get("dare_linear"), parameters=parameters,
                                      ids=["gen", "e1"], base_index=0, name=k)
    return out


MAIN = ["a.weight", "b.bias", "c.conv", "d.logit_scale"]


def _cases() -> list[Case]:
    G, E = "gen", "e1"
    two = lambda x: [x["e1"], x["e2"]]  # noqa: E731
    c_base, c_fts = (lambda x: x["cancel_base"]), (lambda x: [x["cancel_e1"], x["cancel_e2"]])
    mk_two = lambda x: {"gen": x["gen"], "e1": x["e1"], "e2": x["e2"]}  # noqa: E731
    mk_cancel = lambda x: {"gen": x["cancel_base"], "e1": x["cancel_e1"], "e2": x["cancel_e2"]}  # noqa: E731

    def ties_fb(name: str, setting: str, kind: str, density: float, merge_func: str, *, per_tensor: bool) -> Case:
        """tcube's TIES against FusionBench's ties_merging on the two experts."""
        return Case(name, "ties", "FusionBench", setting, kind,
                    lambda x: merging.ties(x[G], two(x), density=density, scale=SCALE),
                    lambda r, x: fb_ties(r.fb, x[G], two(x), scaling_factor=SCALE, threshold=density,
                                         merge_func=merge_func, per_tensor=per_tensor))

    return [
        # ---- weight average / WiSE-FT
        Case("wa_fb", "weight_average", "FusionBench", "state_dict_avg([gen, exp])", "agree",
             lambda x: merging.weight_average([x[G], x[E]]),
             lambda r, x: dict(r.fb.sda.state_dict_avg([x[G], x[E]]))),
        Case("wise_mk", "wise_ft", "mergekit", f"linear, weight gen={ALPHA}, exp={1 - ALPHA:g}", "agree",
             lambda x: merging.wise_ft(x[G], x[E], ALPHA),
             lambda r, x: mk_merge(r.mk, "linear", {"gen": x[G], "e1": x[E]}, "gen",
                                   {"weight": {"gen": ALPHA, "e1": 1 - ALPHA}})),
        # ---- task arithmetic (two experts)
        Case("ta_fb", "task_arithmetic", "FusionBench", f"task_arithmetic_merge, scaling_factor={SCALE}", "agree",
             lambda x: merging.task_arithmetic(x[G], two(x), SCALE),
             lambda r, x: fb_task_arithmetic(r.fb, x[G], two(x), SCALE)),
        Case("ta_mk", "task_arithmetic", "mergekit", f"task_arithmetic, weight={SCALE}", "agree",
             lambda x: merging.task_arithmetic(x[G], two(x), SCALE),
             lambda r, x: mk_merge(r.mk, "task_arithmetic", mk_two(x), "gen", {"weight": SCALE})),
        # ---- TIES (two experts)
        ties_fb("ties_fb", f"ties_merging per tensor, threshold={D_FRAC}, merge_func=mean (d·n not an integer)",
                "agree", D_FRAC, "mean", per_tensor=True),
        ties_fb("ties_fb_global", f"ties_merging over the flattened model (its default), threshold={D_FRAC}, mean",
                "differs", D_FRAC, "mean", per_tensor=False),
        ties_fb("ties_fb_sum", f"merge_func=sum (its default), per tensor, threshold={D_FRAC}", "differs", D_FRAC,
                "sum", per_tensor=True),
        ties_fb("ties_fb_count", f"per tensor, mean, threshold={D_INT} (d·n an integer: keeps ⌊d·n⌋+1)", "differs",
                D_INT, "mean", per_tensor=True),
        Case("ties_fb_zero_sum", "ties", "FusionBench", f"per tensor, mean, threshold={D_FRAC}, trimmed sum 0",
             "differs",
             lambda x: merging.ties(c_base(x), c_fts(x), density=D_FRAC, scale=SCALE),
             lambda r, x: fb_ties(r.fb, c_base(x), c_fts(x), scaling_factor=SCALE, threshold=D_FRAC,
                                  merge_func="mean", per_tensor=True)),
        Case("ties_mk", "ties", "mergekit", f"ties, density={D_INT}, weight=1, lambda={SCALE} (d·n an integer)",
             "agree",
             lambda x: merging.ties(x[G], two(x), density=D_INT, scale=SCALE),
             lambda r, x: mk_merge(r.mk, "ties", mk_two(x), "gen",
                                   {"density": D_INT, "weight": 1.0, "lambda": SCALE})),
        Case("ties_mk_count", "ties", "mergekit", f"ties, density={D_FRAC} (d·n not an integer: keeps ⌊d·n⌋)",
             "differs",
             lambda x: merging.ties(x[G], two(x), density=D_FRAC, scale=SCALE),
             lambda r, x: mk_merge(r.mk, "ties", mk_two(x), "gen",
                                   {"density": D_FRAC, "weight": 1.0, "lambda": SCALE})),
        Case("ties_mk_zero_sum", "ties", "mergekit", f"ties, density={D_INT}, trimmed sum 0", "differs",
             lambda x: merging.ties(c_base(x), c_fts(x), density=D_INT, scale=SCALE),
             lambda r, x: mk_merge(r.mk, "ties", mk_cancel(x), "gen",
                                   {"density": D_INT, "weight": 1.0, "lambda": SCALE})),
        # ---- DARE (one expert, tcube's case)
        Case("dare_fb", "dare", "FusionBench",
             f"DareTaskArithmetic, sparsity_ratio={DROP}, scaling_factor={SCALE}, torch.manual_seed({SEED})",
             "agree",
             lambda x: merging.dare(x[G], [x[E]], drop=DROP, scale=SCALE, seed=SEED),
             lambda r, x: fb_dare(r.fb, x[G], [x[E]], scaling_factor=SCALE, sparsity_ratio=DROP, seed=SEED)),
        Case("dare_mk", "dare", "mergekit",
             f"dare_linear, density={1 - DROP:g}, weight={SCALE / (1 - DROP):g}, rescale=false, same mask", "agree",
             lambda x: merging.dare(x[G], [x[E]], drop=DROP, scale=SCALE, seed=SEED),
             lambda r, x: mk_dare(r.mk, x, {"density": 1 - DROP, "weight": SCALE / (1 - DROP), "rescale": False})),
        Case("dare_mk_l1", "dare", "mergekit",
             f"dare_linear, density={1 - DROP:g}, weight={SCALE}, rescale=true (its default: L1), same mask",
             "differs",
             lambda x: merging.dare(x[G], [x[E]], drop=DROP, scale=SCALE, seed=SEED),
             lambda r, x: mk_dare(r.mk, x, {"density": 1 - DROP, "weight": SCALE})),
        # ---- SLERP
        Case("slerp_fb", "slerp", "FusionBench", f"slerp(t={1 - ALPHA:g}, gen, exp)", "agree",
             lambda x: merging.slerp(x[G], x[E], alpha=ALPHA),
             lambda r, x: fb_slerp(r.fb, 1 - ALPHA, x[G], x[E])),
        Case("slerp_fb_t_is_alpha", "slerp", "FusionBench", f"slerp(t={ALPHA}, gen, exp): tcube's alpha passed as t",
             "differs",
             lambda x: merging.slerp(x[G], x[E], alpha=ALPHA),
             lambda r, x: fb_slerp(r.fb, ALPHA, x[G], x[E])),
        Case("slerp_fb_zero", "slerp", "FusionBench", f"slerp(t={1 - ALPHA:g}), generalist tensor all zeros",
             "differs",
             lambda x: merging.slerp(x["zero_gen"], x["zero_exp"], alpha=ALPHA),
             lambda r, x: fb_slerp(r.fb, 1 - ALPHA, x["zero_gen"], x["zero_exp"])),
        Case("slerp_mk", "slerp", "mergekit", f"slerp, base=gen, t={1 - ALPHA:g}", "agree",
             lambda x: merging.slerp(x[G], x[E], alpha=ALPHA),
             lambda r, x: mk_merge(r.mk, "slerp", {"gen": x[G], "e1": x[E]}, "gen", {"t": 1 - ALPHA})),
        Case("slerp_mk_t_is_alpha", "slerp", "mergekit", f"slerp, base=gen, t={ALPHA}: tcube's alpha passed as t",
             "differs",
             lambda x: merging.slerp(x[G], x[E], alpha=ALPHA),
             lambda r, x: mk_merge(r.mk, "slerp", {"gen": x[G], "e1": x[E]}, "gen", {"t": ALPHA})),
        Case("slerp_mk_zero", "slerp", "mergekit", f"slerp, t={1 - ALPHA:g}, generalist tensor all zeros", "differs",
             lambda x: merging.slerp(x["zero_gen"], x["zero_exp"], alpha=ALPHA),
             lambda r, x: mk_merge(r.mk, "slerp", {"gen": x["zero_gen"], "e1": x["zero_exp"]}, "gen",
                                   {"t": 1 - ALPHA})),
    ]


CASES = _cases()


# ----------------------------------------------------------------------------- reference imports
def _dist_version(root: str, dist: str) -> str | None:
    """Version from the wheel's ``<dist>-<version>.dist-info`` folder name."""
    import zipfile

    if zipfile.is_zipfile(root):
        names = {n.split("/")[0] for n in zipfile.ZipFile(root).namelist()}
    else:
        names = set(os.listdir(root))
    for n in names:
        if n.startswith(dist + "-") and n.endswith(".dist-info"):
            return n[len(dist) + 1 : -len(".dist-info")]
    return None


def find_references(refs: str | os.PathLike | None = None) -> dict[str, str] | None:
    """Paths of the two wheels (or unpacked trees) of the pinned versions in ``refs`` (env
    TCUBE_MERGE_REFS, default /tmp/refwheels); None if either is missing."""
    d = Path(refs or os.environ.get("TCUBE_MERGE_REFS") or DEFAULT_REFS)
    if not d.is_dir():
        return None
    found: dict[str, str] = {}
    for dist, ver, pkg in (("fusion_bench", FB_VERSION, "fusion_bench"), ("mergekit", MK_VERSION, "mergekit")):
        for cand in sorted(d.glob(f"{dist}-{ver}-*.whl")) + [p for p in sorted(d.iterdir()) if (p / pkg).is_dir()]:
            if _dist_version(str(cand), dist) == ver:
                found[dist] = str(cand)
                break
    return found if len(found) == 2 else None


@contextlib.contextmanager
def reference_modules(paths: dict[str, str]) -> Iterator[types.SimpleNamespace]:
    """Import the pure merge functions of both references; restore sys.modules / sys.path after."""
    import importlib

    saved_path = list(sys.path)
    prefixes = ("fusion_bench", "mergekit")
    saved_mods = {k: v for k, v in sys.modules.items() if k.split(".")[0] in prefixes}
    try:
        for k in saved_mods:
            del sys.modules[k]
        # FusionBench: package shells, then only the files with the pure functions
        fb_root = paths["fusion_bench"]
        for pkg in ("fusion_bench", "fusion_bench.utils", "fusion_bench.method",
                    "fusion_bench.method.ties_merging", "fusion_bench.method.dare", "fusion_bench.method.slerp"):
            shell = types.ModuleType(pkg)
            shell.__path__ = [os.path.join(fb_root, *pkg.split("."))]
            sys.modules[pkg] = shell
        fb = types.SimpleNamespace(
            sda=importlib.import_module("fusion_bench.utils.state_dict_arithmetic"),
            ties=importlib.import_module("fusion_bench.method.ties_merging.ties_merging_utils"),
            dare=importlib.import_module("fusion_bench.method.dare.utils"),
            slerp=importlib.import_module("fusion_bench.method.slerp.slerp_utils"),
        )
        # mergekit: its merge_methods package imports with torch + pydantic
        sys.path.insert(0, paths["mergekit"])
        mm = importlib.import_module("mergekit.merge_methods")
        mk = types.SimpleNamespace(get=mm.get, merge_state_dicts=mm.merge_state_dicts, merge_tensors=mm.merge_tensors)
        yield types.SimpleNamespace(fb=fb, mk=mk)
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k.split(".")[0] in prefixes]:
            del sys.modules[k]
        sys.modules.update(saved_mods)


# ----------------------------------------------------------------------------- comparison
def reference_outputs(inputs: dict[str, SD], paths: dict[str, str]) -> dict[str, SD]:
    with torch.no_grad(), reference_modules(paths) as refs:
        return {c.id: {k: v.detach().float().clone() for k, v in c.ref(refs, inputs).items()} for c in CASES}


def max_abs_delta(a: SD, b: SD) -> float:
    if set(a) != set(b):
        raise ValueError(f"key sets differ: {sorted(a)} vs {sorted(b)}")
    return max(float((a[k].float() - b[k].float().reshape(a[k].shape)).abs().max()) if a[k].numel() else 0.0
               for k in a)


def compare(inputs: dict[str, SD], ref_out: dict[str, SD]) -> list[dict]:
    rows = []
    for c in CASES:
        d = max_abs_delta(c.tcube(inputs), ref_out[c.id])
        ok = d <= AGREE_TOL if c.kind == "agree" else d > DIFFER_MIN
        rows.append(dict(id=c.id, method=c.method, reference=c.reference, setting=c.setting, kind=c.kind,
                         max_abs_delta=d, ok=ok))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| method | reference | reference setting (tcube parameters mapped) | kind | max abs Δ |",
             "|---|---|---|---|---|"]
    for r in rows:
        flag = "" if r["ok"] else "  <-- UNEXPECTED"
        lines.append(f"| {r['method']} | {r['reference']} | {r['setting']} | {r['kind']} | "
                     f"{r['max_abs_delta']:.3g}{flag} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- fixture
def _enc(sd: SD) -> dict:
    return {k: {"shape": list(v.shape), "values": [float(f"{x:.9g}") for x in v.float().reshape(-1).tolist()]}
            for k, v in sd.items()}


def _dec(d: dict) -> SD:
    return {k: torch.tensor(v["values"], dtype=torch.float32).reshape(v["shape"]) for k, v in d.items()}


def write_fixture(path: str | os.PathLike, inputs: dict[str, SD], ref_out: dict[str, SD]) -> Path:
    data = {
        "about": "reference outputs of FusionBench / mergekit merges on these inputs; "
                 "regenerate with: python scripts/compare_merges.py --refs DIR --write-fixture PATH",
        "fusion_bench": FB_VERSION, "mergekit": MK_VERSION, "torch": torch.__version__,
        "params": dict(alpha=ALPHA, scale=SCALE, d_int=D_INT, d_frac=D_FRAC, drop=DROP, seed=SEED),
        "inputs": {n: _enc(sd) for n, sd in inputs.items()},
        "reference_outputs": {c.id: _enc(ref_out[c.id]) for c in CASES},
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, allow_nan=False, separators=(",", ":")) + "\n")
    return p


def read_fixture(path: str | os.PathLike) -> tuple[dict[str, SD], dict[str, SD]]:
    data = json.loads(Path(path).read_text())
    want = dict(alpha=ALPHA, scale=SCALE, d_int=D_INT, d_frac=D_FRAC, drop=DROP, seed=SEED)
    if data["params"] != want:
        raise ValueError(f"fixture was recorded with {data['params']}, the script uses {want}: regenerate it")
    missing = [c.id for c in CASES if c.id not in data["reference_outputs"]]
    if missing:
        raise ValueError(f"fixture lacks cases {missing}: regenerate it")
    return ({n: _dec(d) for n, d in data["inputs"].items()},
            {cid: _dec(d) for cid, d in data["reference_outputs"].items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--refs", help=f"folder with the two wheels (default $TCUBE_MERGE_REFS or {DEFAULT_REFS})")
    ap.add_argument("--write-fixture", metavar="PATH", help="record the reference outputs (tiny JSON) here")
    ap.add_argument("--fixture", metavar="PATH", help="no references: compare tcube against a recorded fixture")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.fixture:
        inputs, ref_out = read_fixture(args.fixture)
        source = f"recorded outputs in {args.fixture}"
    else:
        paths = find_references(args.refs)
        if paths is None:
            print(f"reference wheels not found in {args.refs or os.environ.get('TCUBE_MERGE_REFS') or DEFAULT_REFS}:"
                  f"\n  pip download --no-deps fusion-bench=={FB_VERSION} mergekit=={MK_VERSION} -d {DEFAULT_REFS}",
                  file=sys.stderr)
            return 2
        inputs = make_inputs()
        ref_out = reference_outputs(inputs, paths)
        source = f"FusionBench {FB_VERSION} ({paths['fusion_bench']}), mergekit {MK_VERSION} ({paths['mergekit']})"
        if args.write_fixture:
            p = write_fixture(args.write_fixture, inputs, ref_out)
            print(f"wrote {p} ({p.stat().st_size} bytes)")
    rows = compare(inputs, ref_out)
    print(f"tcube vs {source}; agree: max |Δ| ≤ {AGREE_TOL:g}, differs: > {DIFFER_MIN:g}\n")
    print(format_table(rows))
    bad = [r["id"] for r in rows if not r["ok"]]
    if bad:
        print(f"\nUNEXPECTED: {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
