"""The demo's honest Stage-2 summary line and its reader of the stored experiment results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freetumor import demo
from freetumor.errors import ConfigError

NO_GAIN = "This short CPU run shows no gain from synthesis"


def test_summary_states_both_figures_and_no_gain():
    line = demo.stage2_summary(0.3164, 0.3012, 4)
    assert "on 4 held-aside cases" in line
    assert "tumour Dice baseline 0.316, stage 2 0.301 (difference -0.015)" in line
    assert NO_GAIN in line and "experiment_fewlabel_lung.py" in line and "experiment_stage2.py" in line


def test_summary_tie_at_printed_precision_is_no_gain():
    # 0.3161 and 0.3164 both print as 0.316: the line must not call that a gain
    line = demo.stage2_summary(0.3161, 0.3164, 4)
    assert "difference +0.000" in line and NO_GAIN in line


def test_summary_gain_has_no_no_gain_sentence():
    line = demo.stage2_summary(0.30, 0.35, 6)
    assert "tumour Dice baseline 0.300, stage 2 0.350 (difference +0.050)" in line
    assert NO_GAIN not in line and "Stage 2 is ahead" in line


def _bench(tmp_path: Path, fewlabel=None, stage2=None) -> Path:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    if fewlabel is not None:
        (results / "fewlabel_lung.json").write_text(json.dumps(fewlabel))
    if stage2 is not None:
        (results / "experiment_stage2.json").write_text(json.dumps(stage2))
    return tmp_path / "benchmarks"


def test_fewlabel_reader_present_absent_and_tolerant(tmp_path):
    assert demo.read_fewlabel_result(tmp_path / "missing.json") is None
    bench = _bench(tmp_path, fewlabel={
        "experiment": "fewlabel_lung", "extra": [1, 2],
        "arms": {"stage0": {"dice": 0.41, "n": 12}, "none": {"dice": {"mean": 0.40, "sd": 0.1}},
                 "procedural": {"dice": 0.4467}, "generator": {"nsd": 0.3}}})
    got = demo.read_fewlabel_result(bench / "results" / "fewlabel_lung.json")
    assert got == {"stage0": 0.41, "none": 0.40, "procedural": 0.4467}  # generator has no Dice: left out
    lines = demo.stored_results_lines(bench)
    assert "stage0 0.410, none 0.400, procedural 0.447" in lines[0]
    assert "not yet measured" in lines[1]  # no experiment_stage2.json in this folder


def test_stored_lines_absent_file_and_absent_folder(tmp_path):
    bench = _bench(tmp_path, stage2={"settings": {"steps": 400, "test": 10}, "summaries": {"test": {
        "stage0": {"metrics": {"tumour_dice": {"mean": 0.6476}}},
        "generator": {"metrics": {"tumour_dice": {"mean": 0.6721}}}}}})
    real, phantom = demo.stored_results_lines(bench)
    assert "not yet measured" in real and "python benchmarks/experiment_fewlabel_lung.py --quick" in real
    assert "400 steps, 10 held-aside" in phantom and "stage0 0.648, generator 0.672" in phantom
    (gone,) = demo.stored_results_lines(tmp_path / "nowhere")
    assert "not in this installation" in gone


def test_reader_of_the_stored_phantom_experiment():
    stored = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "experiment_stage2.json"
    arms = demo.read_phantom_result(stored)
    raw = json.loads(stored.read_text())["summaries"]["test"]
    assert arms == {k: v["metrics"]["tumour_dice"]["mean"] for k, v in raw.items()}
    assert "stage0" in arms


def test_unknown_stage2_synthesis_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="stage2-synthesis"):
        demo.run_demo(tmp_path / "d", stage2_synthesis="none", log=lambda *a: None)
    assert not (tmp_path / "d").exists()
