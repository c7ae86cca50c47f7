"""tcube's static merges against FusionBench 0.2.33 and mergekit 0.1.5 (scripts/compare_merges.py).

Where the reference wheels are found ($TCUBE_MERGE_REFS, default /tmp/refwheels; see the script's
docstring), the reference code itself runs, and its outputs must also match the recorded fixture.
Otherwise tcube is compared with the outputs recorded in tests/fixtures/merge_conventions.json by
``python scripts/compare_merges.py --refs DIR --write-fixture tests/fixtures/merge_conventions.json``.
Either way the comparison runs: no network, never a skip.

"agree" cases (parameters mapped by the conventions) must match to float32 rounding; "differs" cases
are the documented convention differences (merging.py docstrings, README "Coming from FusionBench or
mergekit") and must still differ, so the documentation cannot silently go stale.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "merge_conventions.json"


@pytest.fixture(scope="module")
def cm():
    name = "tcube_compare_merges"
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "compare_merges.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses need the module registered
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(name, None)


def test_fixture_is_tiny_and_complete(cm) -> None:
    assert FIXTURE.stat().st_size < 50_000
    inputs, ref_out = cm.read_fixture(FIXTURE)
    assert set(ref_out) == {c.id for c in cm.CASES}
    assert {"gen", "e1", "e2", "cancel_base", "zero_gen"} <= set(inputs)


def test_merges_match_references_where_conventions_agree(cm, record_property) -> None:
    paths = cm.find_references()
    rec_inputs, rec_out = cm.read_fixture(FIXTURE)
    if paths is not None:
        mode = "live reference code"
        inputs = cm.make_inputs()
        ref_out = cm.reference_outputs(inputs, paths)
        # the recorded fixture must be what the reference code gives on the recorded inputs
        assert cm.max_abs_delta(inputs["gen"], rec_inputs["gen"]) == 0.0
        stale = {cid: cm.max_abs_delta(ref_out[cid], rec_out[cid]) for cid in ref_out}
        assert all(d <= cm.AGREE_TOL for d in stale.values()), f"fixture is stale, regenerate it: {stale}"
    else:
        mode = f"recorded outputs ({FIXTURE.name}); reference wheels not found"
        inputs, ref_out = rec_inputs, rec_out
    record_property("reference_mode", mode)
    print(f"reference mode: {mode}")
    rows = cm.compare(inputs, ref_out)
    bad = [r for r in rows if not r["ok"]]
    assert not bad, f"[{mode}]\n" + cm.format_table(bad)
    assert sum(r["kind"] == "agree" for r in rows) >= 9
