"""The Stage-2 phantom tables of docs/benchmarks/stage2-phantom.md are the stored experiment's, printed by the
experiment script."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "experiment_stage2.py"
RESULTS = REPO / "benchmarks" / "results" / "experiment_stage2.json"


@pytest.fixture(scope="module")
def exp():
    spec = importlib.util.spec_from_file_location("experiment_stage2", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


def test_readme_tables_are_the_scripts_output_from_the_stored_json():
    r = subprocess.run([sys.executable, str(SCRIPT), "--table", str(RESULTS)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    readme = (REPO / "docs" / "benchmarks" / "stage2-phantom.md").read_text(encoding="utf-8")
    blocks = [b for b in r.stdout.strip().split("\n\n") if b]
    assert len(blocks) == 3  # every run; against the better baseline; notes
    for block in blocks:
        assert block in readme, block


def test_table_has_every_run_and_reads_its_numbers(exp, results):
    text = exp.stage2_tables(results)
    header = text.splitlines()[0]
    runs = list(results["summaries"]["test"])
    assert "stage0" in runs and all(f"`{r}`" in header for r in runs)
    row = next(ln for ln in text.splitlines() if ln.startswith("| tumour Dice, usual tumours |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells == [f"{results['summaries']['test'][r]['metrics']['tumour_dice']['mean']:.3f}" for r in runs]
    row = next(ln for ln in text.splitlines() if ln.startswith("| early tumours (< 20 mm) detected |"))
    det = [results["summaries"]["test-small"][r]["detection"]["early_sensitivity"] for r in runs]
    assert [c.strip() for c in row.strip("|").split("|")][1:] == [f"{d['k']}/{d['n']}" for d in det]


def test_gain_is_over_the_better_baseline(exp, results):
    """Swap which baseline is stronger: the second table follows, and the gain is over that one."""
    res = copy.deepcopy(results)
    s = res["summaries"]["test"]
    s["stage0"]["metrics"]["tumour_dice"]["mean"] = 0.50
    s["none"]["metrics"]["tumour_dice"]["mean"] = 0.60
    s["generator"]["metrics"]["tumour_dice"]["mean"] = 0.65
    rows = [ln for ln in exp.stage2_tables(res).splitlines() if ln.startswith("| tumour Dice, usual tumours |")]
    assert rows[1].startswith("| tumour Dice, usual tumours | `none`: 0.600 |") and "| +0.050 (paired" in rows[1]
    s["stage0"]["metrics"]["tumour_dice"]["mean"] = 0.62
    rows = [ln for ln in exp.stage2_tables(res).splitlines() if ln.startswith("| tumour Dice, usual tumours |")]
    assert rows[1].startswith("| tumour Dice, usual tumours | `stage0`: 0.620 |") and rows[1].endswith("| +0.030 |")
    # fewer false positives is better
    s["stage0"]["detection"]["false_positives_per_scan"]["value"] = 9.0
    rows = [ln for ln in exp.stage2_tables(res).splitlines()
            if ln.startswith("| false positives per scan, usual tumours |")]
    assert rows[1].startswith(f"| false positives per scan, usual tumours | `none`: "
                              f"{s['none']['detection']['false_positives_per_scan']['value']:.1f} |")


def test_table_of_a_bad_file_is_one_line_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    r = subprocess.run([sys.executable, str(SCRIPT), "--table", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
