"""The evaluation harness: ``python -m tcube.eval [overrides]`` (Hydra; configs in the top-level conf/).

``run(cfg, run_dir)`` does the work and is what tests and scripts call with a composed config:
validate the config (fail fast, before any model is loaded), list the cells of the chosen
protocols, skip those already in ``<run_dir>/results.jsonl``, evaluate the rest (appending one row
per cell as it finishes), then rewrite ``summary.json`` and ``report.md`` atomically.

The config directory is found next to the package (``Path(__file__).parents[2] / "conf"``), which
holds for a source checkout and an editable install (``pip install -e .``); a regular (non-editable)
install does not ship conf/, so run from a checkout or pass ``--config-dir /path/to/tcube/conf``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from ..data.registry import entry_from_config
from ..io import json_safe, write_text_atomic
from ..protocols import (
    Context,
    EvalSet,
    Skip,
    Variant,
    check_engine,
    eval_sets,
    make_variant,
    protocol_names,
    resolve_data,
)
from ..protocols.base import cap_limit
from ..reporting.report import render_report, summarize
from ..reporting.results import RESULTS_NAME, ResultsFile, cell_key, rows_in
from .cache import LogitCache
from .config import register_configs, to_settings
from .distributed import SINGLE, Dist
from .runner import CellRunner, PairInfo
from .zoo_link import open_zoo, run_datasets, uses_zoo

log = logging.getLogger("tcube.eval")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
EXIT_CONFIG_ERROR = 2


@dataclass(frozen=True)
class Part:
    """One expert of the run: the settings with its model specs and dataset filled in, and that dataset."""

    settings: dict
    primary: Any  # DataRef of the expert's dataset
    zoo: Any = None  # the tcube.zoo.Zoo its zoo: specs resolve in (None: no zoo: spec)


@dataclass(frozen=True)
class Cell:
    """One EvalSet × one method variant: one row of results.jsonl, identified by `key`."""

    eval_set: EvalSet
    variant: Variant
    key: str
    identity: dict
    part: int = 0  # index into Plan.parts


@dataclass
class Plan:
    cells: list[Cell]
    skipped: list[Skip]
    methods: list[str]
    parts: list[Part]
    mixed: list = dataclasses.field(default_factory=list)  # harness.mixed.MixedCell: one generalist, K experts

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.cells] + [c.key for c in self.mixed]

    def groups(self, done: set[str]) -> list[tuple[int, EvalSet, list[Cell]]]:
        """Pending cells grouped by (part, EvalSet) in plan order: images and endpoint logits are shared."""
        out: OrderedDict[int, tuple[int, EvalSet, list[Cell]]] = OrderedDict()
        for cell in self.cells:
            if cell.key not in done:
                out.setdefault(id(cell.eval_set), (cell.part, cell.eval_set, []))[2].append(cell)
        return list(out.values())


def method_variants(method: dict[str, Any], references: list[str]) -> list[Variant]:
    """The variants of the `method` config: one named method with its own keys, or `all` (below)."""
    from ..methods.registry import get_method, method_names, split_params

    name = method.get("name")
    if name == "all":
        # `all`: method.params.<method>.<key> sets one method's parameter; any other key is shared by
        # every selected method that declares it and overrides params.<method> (+method.gamma=2: t3, t3_batch).
        names = list(method.get("methods") or method_names())
        per_method = dict(method.get("params") or {})
        shared = {k: v for k, v in method.items() if k not in ("name", "methods", "params") and v is not None}
        for n in per_method:
            get_method(n)  # a clear error for a misspelt method
        used = {k for share in split_params(shared, names).values() for k in share}
        if set(shared) - used:
            raise ValueError(f"method parameters {sorted(set(shared) - used)} are unknown to the methods {names}; "
                             "per method: method.params.<method>.<parameter>=value")
    else:
        names, per_method = [name], {}
        shared = {k: v for k, v in method.items() if k != "name"}
        get_method(name).make_params(**shared)  # names the method's parameters on a wrong key or value
    ordered = list(dict.fromkeys(list(references) + names))  # references first: they head every table
    shares = split_params(shared, ordered)
    if name != "all":
        shares[name] = shared
    return [make_variant(n, {**(per_method.get(n) or {}), **shares[n]}) for n in ordered]


def build_plan(s: dict[str, Any]) -> Plan:
    """Validate the settings and list every cell; loads no model (fails fast on bad overrides)."""
    from ..runtime.device import resolve_device
    from ..runtime.precision import check_precision

    check_precision(s["precision"], resolve_device(s["device"]))
    engine = s["engine"]["name"]
    from ..methods.registry import load_plugins

    load_plugins(s["plugins"])  # the user's modules that register methods, before any name is looked up
    variants = method_variants(s["method"], list(s["references"]))
    check_engine(variants, engine)
    for key in ("generalist", "expert"):
        if not s["model"].get(key):
            raise ValueError(f"model.{key} is not set: pass model.{key}=<spec> (e.g. local-dir:/path)")
    parts, skipped = plan_parts(s)
    if uses_zoo(s["model"]):  # one generalist for the whole run: it sees every dataset the run configures
        configured = run_datasets(s, [p.primary for p in parts])
        parts = [dataclasses.replace(p, zoo=open_zoo(p.settings, p.primary, configured)) for p in parts]
    cells = []
    for index, part in enumerate(parts):
        p = part.settings
        zoo_key = part.zoo.key if part.zoo is not None else None
        ctx = Context(data=part.primary, options=p["protocol"], data_root=p["data"]["root"],
                      size=p["data"]["size"], has_expert_base=bool(p["model"].get("expert_base")))
        sets, skips = eval_sets(p["protocol"]["name"], ctx)
        skipped += skips
        for es in sets:
            for v in variants:
                ident = cell_identity(es, v, p, zoo_key)
                cells.append(Cell(es, v, cell_key(ident), ident, index))
    mixed = []
    if "mixed" in protocol_names(s["protocol"]["name"], s["protocol"]):
        from .mixed import plan_mixed

        mixed = plan_mixed(s, parts, expert_specs(parts))
    return Plan(cells, skipped, [v.method for v in variants], parts, mixed)


def expert_specs(parts: list[Part]) -> list[str]:
    """The expert of each part (model.experts[i], or the model.expert pattern filled with its dataset)."""
    return [p.settings["model"]["expert"] for p in parts]


def plan_parts(s: dict[str, Any]) -> tuple[list[Part], list[Skip]]:
    """One Part per expert dataset: `data=all` lists several (those whose file is missing are skipped).

    A model spec may name its dataset as `{dataset}` (conf/model/zoo.yaml: `zoo:expert-{dataset}`), so
    one model config serves every modality.
    """
    data = s["data"]
    root, size = data["root"], data["size"]
    if data.get("name") != "all":
        experts = s["model"].get("experts")
        if experts is not None and len(experts) != 1:
            raise ValueError(f"model.experts lists {len(experts)} experts for one dataset ({data.get('name')}); "
                             "use data=all with data.datasets, one per expert")
        return [_part(s, data, resolve_data(entry_from_config(data), root, size), experts[0] if experts else None)], []
    names = list(data.get("datasets") or [])
    if not names:
        raise ValueError("data=all needs data.datasets, e.g. data.datasets=[retinamnist,ph2]")
    experts = s["model"].get("experts")
    if experts is not None and len(experts) != len(names):
        raise ValueError(f"model.experts lists {len(experts)} experts for the {len(names)} datasets {names}; give one "
                         "per dataset, in data.datasets' order (or model.experts=null for the model.expert pattern)")
    parts, skipped = [], []
    for i, name in enumerate(names):
        try:
            parts.append(_part(s, {**data, "name": name, "datasets": None}, resolve_data(name, root, size),
                               None if experts is None else experts[i]))
        except FileNotFoundError as err:
            skipped.append(Skip("all", name, f"not evaluated: {err}"))
    if not parts:
        raise FileNotFoundError(f"data=all found none of {names} in {root or '$TCUBE_DATA_DIR or ~/.medmnist'}; "
                                "set TCUBE_DATA_DIR (or data.root) to the folder with the MedMNIST npz files")
    return parts, skipped


def _part(s: dict[str, Any], data: dict[str, Any], primary: Any, expert: str | None = None) -> Part:
    model = {**s["model"], **({"expert": expert} if expert is not None else {})}
    model = {k: v.replace("{dataset}", primary.name) if isinstance(v, str) else v for k, v in model.items()}
    return Part({**s, "model": model, "data": data}, primary)


def cell_identity(es: EvalSet, v: Variant, s: dict[str, Any], zoo_key: str | None = None) -> dict[str, Any]:
    """Everything that determines a cell's result (its key hashes this). `zoo_key`: the zoo generalist's
    dataset set, None for the built-in four (whose rows keep the keys they had before sets were keyed)."""
    model, engine = s["model"], s["engine"]
    specs = (model["generalist"], model[es.expert])
    ident = {"expert_data": s["data"]["name"], **es.describe(), "method": v.method, "config_params": v.kwargs,
             "engine": engine["name"],
             "engine_options": {k: engine[k] for k in sorted(engine) if k != "name" and engine[k] is not None},
             "seed": s["seed"], "limit": cap_limit(s["limit"], es.limit), "generalist": specs[0],
             "expert": specs[1], "prompts": es.prompt_hash()}
    if any(str(x).startswith("zoo:") for x in specs):
        ident["zoo_profile"] = model["zoo_profile"]
        if zoo_key is not None:
            ident["zoo_datasets"] = zoo_key
    if s["precision"] != "fp32":  # fp32 rows keep the keys they had before precision existed
        ident["precision"] = s["precision"]
    if v.needs_tuning:
        ident["tuning_data"] = s["tuning_data"]  # rows keep "calibration" for the temperatures fitted there
        ident["tuning_limit"] = cap_limit(s["limit"], s["tuning_limit"])
    return ident


def view_key(identity: dict[str, Any]) -> str:
    """A cell's identity without the protocol labels: equal keys mean the same images, models and method."""
    return cell_key({k: v for k, v in identity.items() if k not in ("protocol", "split", "role")})


# -- models ----------------------------------------------------------------------------------------
def check_model_specs(model: dict[str, Any], *, has_class_split: bool, zoo: Any = None) -> None:
    """What can be checked of a part's model specs without loading them: zoo names the zoo can train (and a
    stored generalist that saw the run's datasets), local folders and weight files that exist. Hub and
    built-in names are checked when they load."""
    roles = ["generalist", "expert"] + (["expert_base"] if model.get("expert_base") and has_class_split else [])
    for role in roles:
        spec = str(model[role])
        if spec.startswith("zoo:"):
            from ..zoo.store import parse_name

            try:
                if zoo is not None:
                    zoo.check(spec[len("zoo:"):])
                else:
                    parse_name(spec[len("zoo:"):])
            except ValueError as err:
                raise ValueError(f"model.{role}={spec}: {err}") from None
            continue
        if spec.startswith("local-dir:") or ":" not in spec:  # a folder or a weights file on this machine
            path = Path(spec.removeprefix("local-dir:")).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"model.{role}={spec}: {path} does not exist; pass model.{role}=local-dir:DIR "
                                        "(a folder written by tcube.models.save_local_dir) or a weights file")


def resolve_model_spec(spec: str, zoo: Any = None) -> str:
    """`zoo:NAME` -> the part's zoo's local-dir folder (trained on first use); other specs unchanged."""
    if not str(spec).startswith("zoo:"):
        return spec
    if zoo is None:
        raise ValueError(f"model spec '{spec}' needs the run's zoo (Part.zoo, set by build_plan)")
    return zoo.resolve(spec)


def pair_loader(s: dict[str, Any], device: str, dist: Dist = SINGLE, zoo: Any = None) -> Callable[[str], PairInfo]:
    """role ("expert" | "expert_base") -> the loaded (generalist, role) pair, loaded once, on first use."""
    from ..models import load_pair
    from ..models.fingerprint import model_fingerprint

    loaded: dict[str, PairInfo] = {}

    def get(role: str) -> PairInfo:
        if role not in loaded:
            specs = (s["model"]["generalist"], s["model"][role])
            # rank 0 first: a zoo: spec may train the model into the shared store on first use
            resolved = dist.main_first(lambda: [resolve_model_spec(x, zoo) for x in specs])
            pair = load_pair(*resolved, device=device)
            loaded[role] = PairInfo(pair, specs, (model_fingerprint(pair.generalist), model_fingerprint(pair.expert)))
            log.info("loaded %s pair %s (fingerprints %s)", role, specs, loaded[role].fingerprints)
        return loaded[role]

    return get


def _device(name: str, dist: Dist = SINGLE) -> str:
    from ..runtime.device import resolve_device
    from .distributed import local_device

    return str(local_device(resolve_device(name), dist))


# -- the run ---------------------------------------------------------------------------------------
def run(cfg: DictConfig | dict, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate every pending cell of `cfg` into `run_dir` (default: Hydra's output dir); returns the summary."""
    s = to_settings(cfg)
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    plan = build_plan(s)
    for part in plan.parts:  # every expert's models, before the first cell: not after hours of the others
        check_model_specs(part.settings["model"], has_class_split=part.primary.spec.num_classes >= 4, zoo=part.zoo)
    from .distributed import init_from_env, shutdown

    dist, created = init_from_env(_device(s["device"]))  # torchrun: join the group (tcube.harness.distributed)
    try:
        return _run(plan, s, run_dir, dist)
    finally:
        shutdown(created)


def _run(plan: Plan, s: dict[str, Any], run_dir: Path, dist: Dist) -> dict[str, Any]:
    from .loggers import make_logger

    for skip in plan.skipped:
        log.warning("skipping %s %s: %s", skip.protocol, skip.what, skip.reason)
    results = ResultsFile(run_dir / RESULTS_NAME)

    def done_keys() -> set[str]:  # rank 0 reads the file; every rank must skip the same cells
        results.repair()
        return results.keys()

    done = dist.from_main(done_keys)
    groups = plan.groups(done)
    pending = sum(len(cells) for *_, cells in groups) + sum(c.key not in done for c in plan.mixed)
    log.info("%d cells planned, %d already in %s, %d to compute", len(plan.keys), len(plan.keys) - pending,
             results.path, pending)
    # only rank 0 writes; the other ranks compute their share of each cell and return rank 0's summary
    logger = make_logger(s["logger"] if dist.is_main else {"name": "none"}, run_dir, s)
    def outputs() -> dict[str, Any]:
        rows = rows_in(results.rows(), plan.keys)
        summary = write_outputs(rows, plan, s, run_dir, pending)
        logger.log_summary(summary, rows)
        return summary

    try:
        try:
            if groups:
                evaluate(groups, plan, s, results, logger, dist)
            if plan.mixed:
                evaluate_mixed_cells(plan, s, done, results, logger, dist)
            if s["ceiling_grid"]:
                ceilings(plan, s, run_dir, dist)
        except Exception:
            # what finished is already in results.jsonl: report it before the error propagates
            if dist.is_main and results.path.is_file():
                log.error("the run stopped early; writing report.md and summary.json for the finished cells")
                write_outputs(rows_in(results.rows(), plan.keys), plan, s, run_dir, pending)
            raise
        summary = dist.from_main(outputs)
    finally:
        logger.finish()
    return summary


def result_row(cell, metrics: dict) -> dict:
    """One results.jsonl row: the cell's identity, its metrics, its key and when it finished."""
    return {**cell.identity, **metrics, "key": cell.key, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def make_runner(part: Part, cache: LogitCache, dist: Dist = SINGLE) -> CellRunner:
    """The cell runner of one expert (its models load on first use)."""
    s, engine = part.settings, part.settings["engine"]
    return CellRunner(
        pair_loader(s, _device(s["device"], dist), dist, part.zoo), cache=cache,
        engine=engine["name"], engine_options={k: engine[k] for k in ("num_buckets",) if engine[k] is not None},
        text_heads=engine["text_heads"], grid_size=engine["grid_size"],
        batch_size=s["batch_size"], limit=s["limit"], seed=s["seed"], tuning_data=s["tuning_data"],
        tuning_limit=s["tuning_limit"], primary=part.primary, progress=s["progress"],
        precision=s["precision"], dist=dist)


def evaluate(groups: list[tuple[int, EvalSet, list[Cell]]], plan: Plan, s: dict[str, Any], results: ResultsFile,
             logger, dist: Dist = SINGLE) -> None:
    """Compute the pending cells, appending each row as soon as it exists (a kill loses one cell at most)."""
    from tqdm import tqdm

    cache = LogitCache(s["cache_dir"], enabled=s["cache"])
    runner, runner_part = None, None
    computed: dict[str, tuple[str, dict]] = {}  # view_key -> (key, metrics) of the cell that computed it
    with tqdm(total=sum(len(c) for *_, c in groups), desc="cells",
              disable=not (s["progress"] and dist.is_main)) as bar:

        def emit(cell: Cell, metrics: dict) -> None:
            row = result_row(cell, metrics)
            if dist.is_main:  # every rank holds the gathered metrics; one writes them
                results.append(row)
                logger.log_row(row)
            bar.update()

        for part, es, cells in groups:
            if part != runner_part:  # one expert at a time: the previous one's models are released
                runner, runner_part = make_runner(plan.parts[part], cache, dist), part
                log.info("expert %d/%d: %s", part + 1, len(plan.parts), plan.parts[part].primary.name)
            fresh = []
            for cell in cells:  # e.g. in_domain and base_to_novel's base set are the same images
                same = computed.get(view_key(cell.identity))
                if same is None:
                    fresh.append(cell)
                else:
                    emit(cell, {**same[1], "same_as": same[0]})
            by_variant = {c.variant: c for c in fresh}
            for variant, metrics in (runner.run(es, list(by_variant)) if fresh else ()):
                cell = by_variant[variant]
                computed[view_key(cell.identity)] = (cell.key, metrics)
                emit(cell, metrics)
    log.info("endpoint logits: %d cache hits, %d misses (%s)", cache.hits, cache.misses, cache.folder)


def evaluate_mixed_cells(plan: Plan, s: dict[str, Any], done: set[str], results: ResultsFile, logger,
                         dist: Dist = SINGLE) -> None:
    """The mixed protocol's pending cells (one process: its stream is small next to the pair protocols)."""
    from .mixed import evaluate_mixed

    if dist.active:
        raise ValueError("protocol mixed runs in a single process: rerun into the same folder without torchrun "
                         "(finished cells are skipped)")

    def emit(cell, metrics: dict) -> None:
        row = result_row(cell, metrics)
        results.append(row)
        logger.log_row(row)

    evaluate_mixed(plan.mixed, done, s, plan.parts, expert_specs(plan.parts), emit, _device(s["device"], dist))


def ceilings(plan: Plan, s: dict[str, Any], run_dir: Path, dist: Dist = SINGLE) -> None:
    """The per-sample ceiling's λ-grid bits of every view of the plan (tcube.harness.ceiling), after its cells."""
    from .ceiling import compute_ceilings

    if dist.active:  # one process scores every view; the others would wait in a collective and time out
        raise ValueError(f"ceiling_grid={s['ceiling_grid']} runs in a single process: rerun into the same folder "
                         "without torchrun (finished cells are skipped, only the ceiling is computed)")
    cache = LogitCache(s["cache_dir"], enabled=s["cache"])
    compute_ceilings(plan.cells, s["ceiling_grid"], run_dir, lambda part: make_runner(plan.parts[part], cache),
                     progress=s["progress"])


def ceiling_records(plan: Plan, s: dict[str, Any], run_dir: Path) -> list[dict]:
    """The stored ceiling views of this plan at its grid size (none when ceiling_grid=0)."""
    if not s["ceiling_grid"]:
        return []
    from ..reporting.ceiling import load_ceiling
    from .ceiling import ceiling_key

    return load_ceiling(run_dir, {ceiling_key(c.identity, s["ceiling_grid"]) for c in plan.cells})


def write_outputs(rows: list[dict], plan: Plan, s: dict[str, Any], run_dir: Path, computed: int) -> dict[str, Any]:
    """summary.json and report.md (each replaced atomically), then the figures."""
    ceiling = ceiling_records(plan, s, run_dir)
    summary = summarize(rows, plan.methods, ceiling=ceiling)
    summary.update(skipped=[dataclasses.asdict(k) for k in plan.skipped],
                   cells={"planned": len(plan.keys), "computed": computed, "resumed": len(plan.keys) - computed,
                          "rows": len(rows)},
                   config=s, run_dir=str(run_dir))
    experts = [p.settings["model"] for p in plan.parts]
    meta = {"generalist": s["model"]["generalist"], "expert": ", ".join(m["expert"] for m in experts),
            "expert_base": s["model"].get("expert_base"), "data": ", ".join(p.primary.name for p in plan.parts),
            "protocol": s["protocol"]["name"], "engine": s["engine"]["name"], "seed": s["seed"],
            "limit": s["limit"], "cells": len(rows), "generalist_datasets": generalist_datasets(s, plan.parts[0].zoo if plan.parts else None)}
    write_text_atomic(run_dir / "summary.json", json.dumps(json_safe(summary), indent=2, default=str))
    write_text_atomic(run_dir / "report.md", render_report(summary, rows, meta))
    if s["plots"] and rows:
        write_plots(rows, run_dir, summary.get("ceiling"))
    return summary


def generalist_datasets(s: dict[str, Any], zoo: Any = None) -> list[str] | None:
    """The datasets the generalist was trained on, as its tcube manifest records them; None = unknown
    (the report then makes no claim about what "novel" means)."""
    spec = str(s["model"]["generalist"])
    if spec.startswith("zoo:"):
        if zoo is None:
            return None
        folder = zoo.folder / spec[len("zoo:"):]
    elif spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:"):])
    else:
        return None
    manifest = folder / "manifest.json"
    trained_on = json.loads(manifest.read_text()).get("trained_on") if manifest.is_file() else None
    return list(trained_on) if trained_on else None


def write_plots(rows: list[dict], run_dir: Path, ceiling: list[dict] | None = None) -> None:
    """Figures are a convenience: a failure is logged, never fatal (the results are already on disk)."""
    try:
        import pandas as pd

        from ..reporting.mixed import is_mixed
        from ..reporting.plots import save_all, save_ceiling

        pair_rows = [r for r in rows if not is_mixed(r)]
        written = (save_all(pd.DataFrame.from_records(pair_rows), run_dir) if pair_rows else []) \
            + save_ceiling(ceiling or [], run_dir)
        log.info("wrote %d figures to %s", len(written), run_dir)
    except Exception as err:  # noqa: BLE001
        log.warning("could not draw the figures (%s: %s); results.jsonl, summary.json and report.md are complete",
                    type(err).__name__, err)


# -- CLI -------------------------------------------------------------------------------------------
def cli(cfg: DictConfig) -> None:
    """Run, turning our own configuration and data errors into one message and exit code 2."""
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("TCUBE_DEBUG") == "1":
            raise
        print(f"tcube.eval: error: {err}", file=sys.stderr)
        print("(set TCUBE_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)


register_configs()  # the typed schema conf/config.yaml starts from (an in-memory ConfigStore entry)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    cli(cfg)


def main() -> None:
    argv = sys.argv[1:]
    if not (CONF_DIR / "config.yaml").is_file():
        if not any(a.startswith(("--config-dir", "-cd")) for a in argv):
            sys.exit(f"tcube.eval: error: no configs at {CONF_DIR}. conf/ lives in the source tree: install "
                     "tcube with `pip install -e .` from a checkout, or pass --config-dir /path/to/tcube/conf")
    _hydra_main()


if __name__ == "__main__":
    main()
