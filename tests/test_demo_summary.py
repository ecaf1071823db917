"""The demo's honest Stage-2 summary line and its reader of the stored experiment results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from freetumor import demo
from freetumor.errors import ConfigError

NO_GAIN = demo.NO_GAIN


def test_summary_states_both_figures_and_no_gain():
    line = demo.stage2_summary(0.3164, 0.3012, 4)
    assert "on 4 held-aside phantom cases" in line
    assert "tumour Dice baseline 0.316, stage 2 0.301 (difference -0.015)" in line
    assert NO_GAIN in line and "experiment_fewlabel_lung.py" in line and "experiment_stage2.py" in line


def test_summary_tie_at_printed_precision_is_no_gain():
    # 0.3161 and 0.3164 both print as 0.316: the line must not call that a gain
    line = demo.stage2_summary(0.3161, 0.3164, 4)
    assert "difference 0.000" in line and NO_GAIN in line


def test_summary_calls_stage2_ahead_only_on_a_significant_gain():
    # the demo page of issue 24: organ Dice worse (p = 0.031), tumour gain not significant (p = 0.066)
    line = demo.stage2_summary(0.30, 0.35, 4, p=0.066, organ=(0.897, 0.881, 0.031))
    assert "tumour Dice baseline 0.300, stage 2 0.350 (difference +0.050, not significant, p = 0.066)" in line
    assert "Organ Dice 0.897 -> 0.881 (difference -0.016, significantly lower, p = 0.031)" in line
    assert "ahead" not in line and NO_GAIN in line and "organ Dice is significantly worse" in line
    line = demo.stage2_summary(0.30, 0.35, 6, p=0.01, organ=(0.897, 0.895, 0.4))
    assert "significantly higher, p = 0.010" in line and "Stage 2 is ahead" in line and NO_GAIN not in line
    line = demo.stage2_summary(0.30, 0.35, 6, p=0.01, organ=(0.897, 0.881, 0.02))
    assert "ahead" not in line and "trade-off" in line
    line = demo.stage2_summary(0.30, 0.35, 6)  # no paired test: no claim either
    assert "ahead" not in line and NO_GAIN in line


@pytest.mark.parametrize("p,words", [(0.031, "significantly lower, p = 0.031"), (0.066, "not significant, p = 0.066"),
                                     (0.0004, "significantly lower, p < 0.001"), (None, "no paired test")])
def test_significance_words_follow_the_p_value(p, words):
    assert demo.significance(-0.016, p) == words


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
    assert "stage0 0.410, none 0.400, procedural 0.447" in lines[0]  # no shifted scores: the arms as they are
    assert "not yet measured" in lines[1]  # no experiment_stage2.json in this folder


def test_stored_lines_absent_file_and_absent_folder(tmp_path):
    bench = _bench(tmp_path, stage2={"settings": {"steps": 400, "test": 10}, "summaries": {"test": {
        "stage0": {"metrics": {"tumour_dice": {"mean": 0.6476}}},
        "generator": {"metrics": {"tumour_dice": {"mean": 0.6721}}}}}})
    real, phantom = demo.stored_results_lines(bench)
    assert "not yet measured" in real and "python benchmarks/experiment_fewlabel_lung.py --quick" in real
    assert "400 steps, 10 held-aside" in phantom and "stage0 0.648, generator 0.672" in phantom
    assert "Paired tests" not in phantom  # the file holds no comparison: none is claimed
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


REPO = Path(__file__).resolve().parents[1]


def _arms(**shifted):
    return {a: {"seeds": 2, "dice": 0.5, "dice_shifted": d, "dice_composite": 0.1 + d / 10,
                "froc_in_lung": {"operating_point": {"fp_per_scan": 10.0 * (i + 1)}}}
            for i, (a, d) in enumerate(shifted.items())}


def _comp(diff, p):
    return {"mean_diff": diff, "t_p": p}


def test_real_ct_result_in_words_from_the_stored_file():
    """The stored real-CT result (benchmarks/results/fewlabel_lung.json) in words: the verdict on the fair
    shifted metric, the composite effect with its false positives, each figure and p as the file has it."""
    stored = json.loads((REPO / "benchmarks" / "results" / "fewlabel_lung.json").read_text())
    text = " ".join(demo.fewlabel_sentences(stored))
    arms = stored["arms"]
    syn = max(("procedural", "generator"), key=lambda a: arms[a]["dice_shifted"])
    base = max(("stage0", "none", "copy_paste"), key=lambda a: arms[a]["dice_shifted"])
    c = stored["comparisons"][f"{syn}_vs_{base}"]["shifted"]
    beaten = c["mean_diff"] > 0 and c["t_p"] < 0.05
    assert ("synthesis beat the baselines" in text) == beaten
    assert ("has not beaten" in text) == (not beaten)
    assert f"{demo.signed(c['mean_diff'])}, {demo.significance(c['mean_diff'], c['t_p'])}" in text
    for a in arms:
        assert f"{a} {arms[a]['dice_shifted']:.3f}" in text
    comp = stored["comparisons"]["procedural_vs_copy_paste"]["composite"]
    if arms["procedural"]["dice_composite"] > arms["generator"]["dice_composite"]:
        assert f"({demo.signed(comp['mean_diff'])}, {demo.significance(comp['mean_diff'], comp['t_p'])})" in text
        fp = [arms[a]["froc_in_lung"]["operating_point"]["fp_per_scan"] for a in ("procedural", "copy_paste")]
        assert f"with {'more' if fp[0] > fp[1] else 'fewer'} false positives" in text
    assert "Real CT" in text and "{" not in text
    assert not re.search(r"\d\.\d{4,}", text)  # rounded: three decimals at most
    # the terminal and page lines: real CT first
    real, phantom = demo.stored_results_lines()
    assert real.startswith("Real CT") and phantom.startswith("Phantom experiment") and "p = " in phantom


def test_real_ct_words_follow_the_numbers_not_a_script():
    win = {"k": 10, "arms": _arms(stage0=0.40, none=0.38, copy_paste=0.41, procedural=0.47, generator=0.45),
           "comparisons": {"procedural_vs_copy_paste": {"shifted": _comp(0.06, 0.004), "composite": _comp(0.01, 0.4)}}}
    text = " ".join(demo.fewlabel_sentences(win))
    assert "synthesis beat the baselines there" in text and "+0.060, significantly higher, p = 0.004" in text
    assert "does not clearly help against copy_paste" in text and "not significant, p = 0.400" in text
    tie = {**win, "comparisons": {"procedural_vs_copy_paste": {"shifted": _comp(0.06, 0.2)}}}
    assert "has not beaten the baselines there by more than chance" in " ".join(demo.fewlabel_sentences(tie))
    assert demo.fewlabel_sentences({"arms": {"stage0": {"dice": 0.4}}}) == []  # no shifted scores: no words
