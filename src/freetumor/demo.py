"""``freetumor demo``: the whole synthesis path on the embedded phantom.

Writes a phantom cohort (abdomen and chest), puts synthetic tumours into the
healthy cases (liver, pancreas and kidney in the abdomen; a lung tumour and a
COVID-19 lesion in the chest), and builds ``index.html`` with the before/after
figures and the lesion table.

Example:
    >>> import tempfile, os
    >>> page = run_demo(os.path.join(tempfile.mkdtemp(), "demo"), seed=0, log=lambda *a: None)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from .config import load_config
from .data import load_datalist
from .errors import ConfigError
from .evaluation.compare import compare_reports
from .evaluation.evaluate import evaluate_predictions
from .htmlpage import lesion_table, write_html_page
from .inference import predict_files
from .io import case_name, load_volume, write_bytes_atomic
from .phantom import write_cohort
from .progress import Progress
from .synthesis import QCRejectedError, SynthesisOptions, Synthesizer, build_synthesizer, synthesize_case
from .training.stage0 import train_segmentation
from .training.stage1 import train_synthesis
from .turing import db
from .turing.build import build_study

# (region, organ, size, count) synthesised on each healthy phantom case of that region.
DEMO_PLAN = (
    ("abdomen", "liver", "mix", 2),
    ("abdomen", "pancreas", "small", 1),
    ("abdomen", "kidney", "small", 1),
    ("chest", "lung", "mix", 2),
    ("chest", "covid", "medium", 1),
)


def run_demo(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    cases: int = 2,
    train_steps: int = 200,
    synth_steps: int = 60,
    stage2_steps: int | None = None,
    stage2_synthesis: str = "procedural",
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """Run the demo into ``out``; return the path of ``index.html``.

    ``train_steps`` > 0 adds a short Stage-0 baseline training (cpu-tiny U-Net) on the
    abdominal phantoms and a prediction on a held-aside phantom case; ``synth_steps`` > 0
    then adds a short Stage-1 run (generator against discriminator and the baseline) and
    rule-based vs learned synthetic tumours side by side; ``stage2_steps`` (default:
    ``train_steps``) > 0 then trains a Stage-2 segmentor with online synthesis on the same labelled
    cases plus a cohort of healthy unlabelled phantoms and compares it with the baseline on
    held-aside phantom cases (evaluate + compare). ``stage2_synthesis``: ``procedural`` (default,
    rule-based tumours, no segmentor QC), ``profile`` (``builtin:liver``, no segmentor QC) or
    ``generator`` (the Stage-1 generator with the baseline as the QC segmentor).

    ``progress``: each phase on stderr with its expected time on 2 idle CPU cores (:func:`demo_phases`),
    the trainers' progress bars, and a heartbeat line whenever 30 s pass without one.
    """
    if stage2_synthesis not in _SYNTHESIS_WORDS:  # refused before minutes of training, not after
        raise ConfigError(f"--stage2-synthesis {stage2_synthesis!r}: choose one of {', '.join(_SYNTHESIS_WORDS)}")
    # Absolute: the datalists the demo writes for its training runs name files in other folders of
    # it, and datalist paths are read relative to the datalist's own folder.
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    steps2 = train_steps if stage2_steps is None else stage2_steps
    with Progress(progress, total=len(demo_phases(train_steps, synth_steps, steps2))) as say:
        return _run_demo(out, seed, cases, train_steps, synth_steps, steps2, stage2_synthesis, log, say, progress)


def _minutes(seconds: float) -> str:
    return f"about {10 * math.ceil(seconds / 10):.0f} s" if seconds < 90 else f"about {round(seconds / 60)} min"


# Seconds per training step of the demo's cpu-tiny runs on an idle 2-core machine (estimates for the phase
# lines, from the whole demo's 140-147 s there, docs/commands/demo.md; 2-3x that beside another CPU-heavy job).
SECONDS_PER_STEP = {"baseline": 0.2, "stage1": 0.5, "stage2": 0.25}


def demo_phases(train_steps: int = 200, synth_steps: int = 60, stage2_steps: int = 200) -> list[str]:
    """The demo's phases, each with its expected time on 2 CPU cores.

    Example:
        >>> demo_phases(200, 60, 200)[4]
        'Stage 1 generator, 60 iterations (about 30 s on 2 idle cores)'
        >>> len(demo_phases(0, 60, 200))
        4
    """
    phases = ["phantom cohorts (about 10 s)", f"synthetic tumours on {len(DEMO_PLAN)} organs (about 20 s)",
              "reader study (about 10 s)"]
    if train_steps > 0:
        phases.append(f"Stage 0 baseline, {train_steps} steps, and its prediction "
                      f"({_minutes(train_steps * SECONDS_PER_STEP['baseline'] + 10)} on 2 idle cores)")
        if synth_steps > 0:
            phases.append(f"Stage 1 generator, {synth_steps} iterations "
                          f"({_minutes(synth_steps * SECONDS_PER_STEP['stage1'])} on 2 idle cores)")
            if stage2_steps > 0:
                phases.append(f"Stage 2 segmentor, {stage2_steps} steps, vs the baseline on held-aside cases "
                              f"({_minutes(stage2_steps * SECONDS_PER_STEP['stage2'] + 20)} on 2 idle cores)")
    phases.append("stored results and the page (about 10 s)")
    return phases


def _run_demo(out: Path, seed: int, cases: int, train_steps: int, synth_steps: int, steps2: int,
              stage2_synthesis: str, log: Callable[[str], None], say: Progress, progress: bool) -> Path:
    phases = iter(demo_phases(train_steps, synth_steps, steps2))
    say(next(phases))
    healthy: dict[str, list[dict]] = {}
    for region in ("abdomen", "chest"):
        dl = write_cohort(out / f"phantom-{region}", 2 * cases, seed=seed, region=region)
        entries = load_datalist(dl)
        healthy[region] = [e for e in entries if not e.get("tumour")]
        log(f"phantom {region}: {len(entries)} cases ({len(healthy[region])} healthy) -> {dl}")

    sections: list[dict] = []
    records: list[dict] = []
    syn_dir = out / "synthetic"
    say(next(phases))
    for region, organ, size, count in DEMO_PLAN:
        images = []
        synthesizer = build_synthesizer(SynthesisOptions(organ, size=size, count=count))
        for k, entry in enumerate(healthy[region]):
            case = f"{case_name(entry['image'])}_{organ}"
            rec = synthesize_case(synthesizer, entry["image"], entry["label"], syn_dir, seed=seed + k, count=count,
                                  case=case)
            records.extend(rec["lesions"])
            images.append(os.path.relpath(syn_dir / rec["outputs"]["figure"], out))
            log(f"{case}: {len(rec['lesions'])} {organ} lesion(s) -> {syn_dir / rec['outputs']['image']}")
        sections.append({
            "heading": f"{organ}: {size} tumours on healthy {region} phantoms",
            "text": "Rows: one lesion each. Panels: axial, coronal, sagittal, before | after; "
                    "the contour marks the synthetic tumour.",
            "images": images,
        })
    sections.append({"heading": "Lesion records", "table": lesion_table(records)})
    say(next(phases))
    sections.append(_turing_section(out, seed, log))
    if train_steps > 0:
        say(next(phases))
        sections.append(_baseline_section(out, train_steps, seed, log, progress=progress))
        if synth_steps > 0:
            say(next(phases))
            sections.append(_stage1_section(out, synth_steps, seed, healthy["abdomen"], log, progress=progress))
            if steps2 > 0:
                say(next(phases))
                sections.append(_stage2_section(out, steps2, seed, log, synthesis=stage2_synthesis,
                                                progress=progress))
    say(next(phases))
    sections.append(_stored_section(log))
    page = out / "index.html"
    write_html_page(
        page,
        "freetumor demo: rule-based synthetic tumours on a procedural CT phantom",
        [{"heading": "What this is", "text": intro_text(train_steps, synth_steps, steps2)}] + sections,
    )
    return page


def intro_text(train_steps: int, synth_steps: int, stage2_steps: int) -> str:
    """The page's first paragraph: what was run, on what data (phantoms), and what is read from stored files.

    Example:
        >>> "Stage-1 generator" in intro_text(200, 0, 200), "Stage-1 generator" in intro_text(200, 60, 200)
        (False, True)
    """
    trained = []
    if train_steps > 0:
        trained.append(f"a Stage-0 baseline segmentor ({train_steps} steps)")
        if synth_steps > 0:
            trained.append(f"a Stage-1 generator ({synth_steps} iterations)")
            if stage2_steps > 0:
                trained.append(f"a Stage-2 segmentor with online synthesis ({stage2_steps} steps)")
    text = ("Everything this demo computes is on procedural CT phantoms (freetumor phantom), not on real CT: "
            "their labels are the phantom's own, drawn by its tumour model. The synthetic tumours of the first "
            "sections use FreeTumor's rule-based shape, position and texture, with no trained network. ")
    if trained:
        text += ("Then short CPU runs train, on the phantoms, " + ", ".join(trained[:-1])
                 + (" and " if len(trained) > 1 else "") + trained[-1] + ": minutes, not the hours of GPU "
                 "training of the paper, so they show what each stage does, not how well it can do. ")
    return text + ("The last section states the stored results of the longer experiments, real CT first; they "
                   "are read from benchmarks/results/, not rerun. Files: phantom-*/ (inputs) and synthetic/ "
                   "(outputs, one JSON record per case).")


def counts_text(counts: dict) -> str:
    """A tally in words, largest first: ``{"accepted": 3, "rejected": 12}`` -> ``'12 rejected, 3 accepted'``.

    Example:
        >>> counts_text({"accepted": 3, "rejected": 12, "ineligible": 0}), counts_text({})
        ('12 rejected, 3 accepted', 'none')
    """
    items = sorted(((int(v), str(k)) for k, v in counts.items() if v), key=lambda kv: (-kv[0], kv[1]))
    return ", ".join(f"{v} {k}" for v, k in items) or "none"


def p_text(p: float | None) -> str:
    """A p-value as printed: three decimals, ``p < 0.001`` below that.

    Example:
        >>> p_text(0.0310), p_text(0.00002), p_text(None)
        ('p = 0.031', 'p < 0.001', 'no paired test')
    """
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "no paired test"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


SIGNIFICANCE_LEVEL = 0.05


def significance(diff: float, p: float | None) -> str:
    """A paired difference in words: significant (p < 0.05) or not, with its direction and p.

    Example:
        >>> significance(-0.016, 0.031)
        'significantly lower, p = 0.031'
        >>> significance(0.021, 0.066)
        'not significant, p = 0.066'
    """
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "no paired test"
    if p < SIGNIFICANCE_LEVEL and diff != 0:
        return f"significantly {'higher' if diff > 0 else 'lower'}, {p_text(p)}"
    return f"not significant, {p_text(p)}"


def signed(x: float) -> str:
    """A difference to three decimals with its sign; one that rounds to zero is ``0.000``.

    Example:
        >>> signed(0.0614), signed(-0.0002), signed(-0.148)
        ('+0.061', '0.000', '-0.148')
    """
    text = f"{x:+.3f}"
    return "0.000" if float(text) == 0 else text


def _turing_section(out: Path, seed: int, log: Callable[[str], None]) -> dict:
    """A small Visual Turing Test study from the abdominal phantoms: real vs synthetic tumours."""
    study = out / "turing-study"
    if study.exists():  # a study from an earlier demo run in the same folder: rebuild it
        shutil.rmtree(study)
    summary = build_study(out / "phantom-abdomen" / "datalist.json", out / "synthetic", study, seed=seed)
    token = db.add_reader(study, "demo-reader")
    url = f"http://127.0.0.1:8000/r/{token}"
    per_type = ", ".join(f"{n} {organ}" for organ, n in summary["per_type"].items())
    log(f"turing study: {summary['cases']} cases ({per_type} of each kind); run `freetumor turing serve {study}` "
        f"and open {url}")
    return {
        "heading": "Visual Turing Test: a blinded reader study",
        "text": f"A study of {summary['cases']} cases (the phantom's own tumours and synthetic ones, balanced per "
                f"tumour type: {per_type} of each kind) was written to turing-study/ (the answer key is turing-study/key.json "
                f"and is never served). Start the reader web app with `freetumor turing serve {study}` and open "
                f"{url} (reader 'demo-reader'); score the answers with `freetumor turing score {study} --out "
                f"{out / 'turing-score'}`.",
    }


def _demo_cfg_overrides(seed: int) -> list[str]:
    """The cpu-tiny settings the demo's Stage 0 and Stage 1 share (same spacing, window, patch)."""
    return ["data.roi_size=[48,48,48]", "data.cache=true", "val.overlap=0.25", f"train.seed={seed}"]


def _demo_seg_cfg(steps: int, seed: int) -> dict:
    """The segmentation recipe of the demo's baseline and of its Stage-2 run (identical but for synthesis)."""
    return load_config("liver-cpu-tiny", [
        f"train.max_steps={steps}", "train.lr=5e-3", "train.warmup_steps=5", f"train.val_every={steps}",
        "data.pos=3.0", "data.neg=1.0", "data.flip_prob=0.0", "data.rot90_prob=0.0",
        f"train.checkpoint_every={steps}", "data.num_samples=4", *_demo_cfg_overrides(seed),
    ])


def _baseline_section(out: Path, steps: int, seed: int, log: Callable[[str], None], *, progress: bool = False) -> dict:
    """Train the cpu-tiny liver baseline on phantoms, predict a held-aside case, draw it."""
    cohort = write_cohort(out / "phantom-train", 5, seed=seed + 100, tumour_fraction=0.8)
    entries = json.loads(cohort.read_text())["training"]
    held = next(e for e in reversed(entries) if e["tumour"])
    train = [dict(e, fold=1) for e in entries if e is not held]
    # The held-aside case is the validation fold: the trainer never trains on it.
    datalist = cohort.parent / "datalist-demo.json"
    datalist.write_text(json.dumps({"label_map": "abdomen7", "training": train + [dict(held, fold=0)]}, indent=1))
    cfg = _demo_seg_cfg(steps, seed)
    run = out / "baseline-run"
    log(f"baseline: training the cpu-tiny liver segmentor for {steps} steps on {len(train)} phantom cases")
    if (run / "final.json").exists():  # a finished run from an earlier demo in the same folder
        summary = json.loads((run / "final.json").read_text())
    else:  # a fresh run, or one that was interrupted: continue it
        summary = train_segmentation(cfg, datalist, run, resume=(run / "last.pt").exists(), log=log,
                                     progress=progress)
    pred_dir = out / "baseline-pred"
    predict_files(run / "best.pt", cohort.parent / held["image"], pred_dir, progress=progress)
    name = Path(held["image"]).name
    image = load_volume(cohort.parent / held["image"])
    truth = load_volume(cohort.parent / held["label"]).array
    pred = load_volume(pred_dir / name).array
    png = out / "baseline-pred" / "prediction.png"
    _draw_prediction(image.array, truth == 2, pred == 2, (truth == 1) | (truth == 2), pred >= 1, png)
    inter = np.logical_and(truth == 2, pred == 2).sum()
    d = 2 * inter / max(1, (truth == 2).sum() + (pred == 2).sum())
    log(f"baseline: tumour Dice on the held-aside case {d:.3f} -> {png}")
    return {
        "heading": "Stage 0: baseline segmentor on the labelled phantoms only (no synthesis)",
        "text": f"A cpu-tiny 3D U-Net (preset liver-cpu-tiny) trained for {summary['steps']} steps on "
                f"{len(train)} labelled phantom cases, then `freetumor predict` on the held-aside case "
                f"{name}: tumour Dice {d:.3f}. Red: ground-truth tumour, yellow: predicted tumour, "
                "blue: predicted liver. A short CPU run: a real baseline trains for hours on GPUs "
                "(preset liver-paper).",
        "images": [os.path.relpath(png, out)],
    }


def _stage1_section(out: Path, steps: int, seed: int, healthy: list[dict], log: Callable[[str], None], *,
                    progress: bool = False) -> dict:
    """Stage 1 on the phantoms with the demo's baseline as the frozen segmentor; rule-based vs learned."""
    cohort = out / "phantom-train" / "datalist-demo.json"
    entries = json.loads(cohort.read_text())["training"]
    labelled = {"label_map": "abdomen7", "training": [
        {"image": str(cohort.parent / e["image"]), "label": str(cohort.parent / e["label"])}
        for e in entries if e["tumour"]]}
    unlabelled = {"label_map": "abdomen7", "training": [{"image": e["image"], "label": e["label"]} for e in healthy]}
    (out / "stage1-labelled.json").write_text(json.dumps(labelled, indent=1))
    (out / "stage1-unlabelled.json").write_text(json.dumps(unlabelled, indent=1))
    cfg = load_config("liver-cpu-tiny", [
        f"synth.max_steps={steps}", f"synth.epoch_steps={max(1, steps // 3)}", f"synth.checkpoint_every={steps}",
        "data.num_samples=2", "synth.probe_samples=8", *_demo_cfg_overrides(seed),
    ])
    run = out / "stage1-run"
    segmentor = out / "baseline-run" / "best.pt"
    log(f"stage 1: training the generator for {steps} steps against a discriminator and the frozen baseline")
    if (run / "final.json").exists():
        summary = json.loads((run / "final.json").read_text())
    else:
        summary = train_synthesis(cfg, out / "stage1-labelled.json", out / "stage1-unlabelled.json", segmentor,
                                  run, resume=(run / "last.pt").exists(), log=log, progress=progress)
    epochs = [json.loads(ln) for ln in (run / "epochs.jsonl").read_text().splitlines() if ln]
    # One healthy case, the same tumour shape and place, rule-based vs learned difference map.
    entry = healthy[0]
    image, label = load_volume(entry["image"]), load_volume(entry["label"])
    # The generator and the QC segmentor are loaded once; the QC thresholds are the generator config's.
    learned_qc = build_synthesizer(SynthesisOptions("liver", size="medium", generator=run / "generator.pt",
                                                    qc_segmentor=segmentor, qc_max_tries=1))
    rule = Synthesizer("liver", size="medium")(image, label, seed=seed + 7)
    learned = Synthesizer("liver", size="medium", difference=learned_qc.difference)(image, label, seed=seed + 7)
    rule_qc = Synthesizer("liver", size="medium", qc=learned_qc.qc, qc_max_tries=1)
    verdicts = []
    for name, checked in (("rule-based", rule_qc), ("learned", learned_qc)):
        try:
            checked(image, label, seed=seed + 7)
            verdicts.append(f"{name}: accepted by QC")
        except QCRejectedError as exc:
            verdicts.append(f"{name}: rejected by QC ({str(exc).rsplit('(last: ', 1)[-1].rstrip(')')})")
    png = out / "stage1-run" / "rule_vs_learned.png"
    write_bytes_atomic(png, _side_by_side(image.array, rule, learned))
    rows = [[e["epoch"], e["step"], e.get("loss_g"), e.get("loss_d"), e.get("probe_recall"), e.get("probe_accepted")]
            for e in epochs]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    r0, r1 = fmt(summary.get("probe_recall_start")), fmt(summary.get("probe_recall_end"))
    log(f"stage 1: segmentor recall of fake tumours on probe patches {r0} -> {r1}; {png}")
    samples = sorted((run / "samples").glob("epoch_*.png"))
    hu = [f"{n} mean HU {res.lesions[0]['mean_hu_before']:.0f} -> {res.lesions[0]['mean_hu_after']:.0f}"
          for n, res in (("rule-based", rule), ("learned", learned))]
    return {
        "heading": "Stage 1: learned difference maps (generator vs discriminator and the frozen baseline)",
        "text": f"A cpu-tiny generator trained for {summary['steps']} iterations (one generator and one "
                f"discriminator step each) on {len(labelled['training'])} labelled and "
                f"{len(unlabelled['training'])} unlabelled phantom cases, with the baseline above as the frozen "
                f"segmentor. The segmentor's recall of fake tumours on fixed probe patches went from {r0} at "
                f"step 0 to {r1}. Below: the same tumour shape and position on a healthy case, with the "
                f"rule-based scalar difference and with the learned map ({'; '.join(hu)}; {'; '.join(verdicts)}); "
                "then the last epoch's probe patches (original / synthetic / accepted by quality control).",
        "images": [os.path.relpath(png, out)] + ([os.path.relpath(samples[-1], out)] if samples else []),
        "table": {"columns": ["epoch", "step", "loss G", "loss D", "probe recall", "QC accepted"], "rows": rows},
    }


# Stage 2's unlabelled pool: healthy abdominal phantoms, more than the labelled cases (labels are scarce,
# healthy scans are not: the setting the method is for).
STAGE2_UNLABELLED = 6


def _stage2_section(out: Path, steps: int, seed: int, log: Callable[[str], None], *,
                    synthesis: str = "procedural", progress: bool = False) -> dict:
    """Stage 2 (the labelled cases + healthy unlabelled cases with online synthesis) vs the baseline, on
    held-aside cases. Segmentor QC only with the learned generator (its weak CPU baseline as the judge)."""
    test = write_cohort(out / "phantom-test", 4, seed=seed + 300, tumour_fraction=1.0)
    pool = write_cohort(out / "phantom-unlabelled", STAGE2_UNLABELLED, seed=seed + 200, tumour_fraction=0.0)
    unlabelled = out / "stage2-unlabelled.json"
    unlabelled.write_text(json.dumps({"label_map": "abdomen7", "training": [
        {"image": str(pool.parent / e["image"]), "label": str(pool.parent / e["label"])}
        for e in json.loads(pool.read_text())["training"]]}, indent=1))
    cfg = _demo_seg_cfg(steps, seed)
    run = out / "stage2-run"
    qc = synthesis == "generator"
    log(f"stage 2: training a segmentor for {steps} steps on the labelled phantoms + {STAGE2_UNLABELLED} healthy "
        f"unlabelled ones with tumours synthesised online {_SYNTHESIS_WORDS[synthesis]}"
        + (" and quality control" if qc else ""))
    if not (run / "final.json").exists():  # a finished run from an earlier demo in the same folder is kept
        train_segmentation(cfg, out / "phantom-train" / "datalist-demo.json", run, resume=(run / "last.pt").exists(),
                           log=log, progress=progress, unlabelled=unlabelled, synthesis=synthesis,
                           options=_stage2_options(out, synthesis))
    tally: dict = {}
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        for k, v in (json.loads(ln).get("synth") or {}).items():
            tally[k] = tally.get(k, 0) + v
    reports = {}
    for name, model in (("baseline", out / "baseline-run" / "best.pt"), ("stage2", run / "best.pt")):
        pred = out / f"test-pred-{name}"
        predict_files(model, test.parent / "imagesTr", pred, progress=progress)
        reports[name] = evaluate_predictions(pred, test, "liver", out / f"eval-{name}", name=name,
                                             progress=progress)
    cmp = compare_reports(out / "eval-baseline", out / "eval-stage2", out / "compare")
    rows = []
    r3 = lambda v: None if v is None else round(float(v), 3)  # noqa: E731
    for k, label in (("tumour_dice", "tumour Dice"), ("tumour_nsd", "tumour NSD"), ("organ_dice", "organ Dice")):
        v = cmp["metrics"][k]
        rows.append([label, r3(v["mean_a"]), r3(v["mean_b"]), r3(v["mean_diff"]),
                     p_text((v.get("t_test") or {}).get("p")), p_text((v.get("wilcoxon") or {}).get("p"))])
    for key, label in (("lesion_sensitivity", "lesion sensitivity"), ("early_sensitivity", "early (< 20 mm)")):
        a = reports["baseline"]["detection"][key]
        b = reports["stage2"]["detection"][key]
        rows.append([label, r3(a["value"]), r3(b["value"]), None if a["value"] is None or b["value"] is None
                     else r3(b["value"] - a["value"]), "no paired test", "no paired test"])
    n_cases = cmp["metrics"]["tumour_dice"].get("n") or 4
    tm, om = cmp["metrics"]["tumour_dice"], cmp["metrics"]["organ_dice"]
    line = stage2_summary(tm["mean_a"], tm["mean_b"], n_cases, p=(tm.get("t_test") or {}).get("p"),
                          organ=(om["mean_a"], om["mean_b"], (om.get("t_test") or {}).get("p")))
    log(f"{line} ({out / 'compare' / 'index.html'})")
    accepted = tally.get("accepted", 0)
    tried = accepted + tally.get("rejected", 0)
    return {
        "heading": "Stage 2: segmentation with online synthesis vs the baseline",
        "text": f"A cpu-tiny segmentor trained for {steps} steps like the baseline, on the same labelled cases plus "
                f"{STAGE2_UNLABELLED} healthy unlabelled phantoms, with tumours synthesised online "
                f"({_SYNTHESIS_WORDS.get(synthesis, synthesis)}) on eligible patches"
                + (f" and filtered by quality control (baseline as the frozen segmentor): {accepted} of {tried} "
                   f"synthetic tumours were accepted (patches: {counts_text(tally)})." if qc else
                   f", without segmentor quality control: {accepted} synthetic tumours "
                   f"were used (patches: {counts_text(tally)}).")
                + f" Both models then predicted {n_cases} held-aside "
                f"phantom cases with tumours (`freetumor evaluate`, `freetumor compare`: paired tests on the same "
                f"cases; p-values of paired t-tests, significant below {SIGNIFICANCE_LEVEL}). Result: {line}",
        "images": ["compare/boxplot.png"],
        "table": {"columns": ["measure", "baseline", "stage 2", "difference", "t-test p", "Wilcoxon p"],
                  "rows": rows},
    }


_SYNTHESIS_WORDS = {
    "generator": "by the Stage-1 generator",
    "procedural": "with the rule-based procedural renderer",
    "profile": "with the built-in liver lesion profile, builtin:liver",
}

# Where the stored results of the longer experiments are, in a source checkout (absent after a pip install).
BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
REAL_DATA_README = "docs/benchmarks/fewlabel-lung.md (`benchmarks/experiment_fewlabel_lung.py`)"
PHANTOM_README = "docs/benchmarks/stage2-phantom.md (`benchmarks/experiment_stage2.py`)"


NO_GAIN = "This short CPU run shows no gain from synthesis"


def stage2_summary(baseline: float, stage2: float, cases: int, p: float | None = None,
                   organ: tuple[float, float, float | None] | None = None) -> str:
    """The demo's Stage-2 result in words: tumour Dice of both models, their difference and its significance
    (paired t-test ``p``), the organ Dice likewise (``organ``: baseline, Stage 2, p), and a verdict that
    calls Stage 2 ahead only when its tumour gain is significant and its organ Dice not significantly worse."""
    b, s2 = f"{baseline:.3f}", f"{stage2:.3f}"
    diff = float(s2) - float(b)
    line = (f"stage 2 vs baseline on {cases} held-aside phantom cases: tumour Dice baseline {b}, stage 2 {s2} "
            f"(difference {signed(diff)}" + ("" if p is None else f", {significance(diff, p)}") + ").")
    organ_worse = False
    if organ is not None:
        oa, ob, op = f"{organ[0]:.3f}", f"{organ[1]:.3f}", organ[2]
        odiff = float(ob) - float(oa)
        organ_worse = odiff < 0 and op is not None and op < SIGNIFICANCE_LEVEL
        line += f" Organ Dice {oa} -> {ob} (difference {signed(odiff)}, {significance(odiff, op)})."
    gain_significant = diff > 0 and p is not None and p < SIGNIFICANCE_LEVEL
    see = (f" For the measured effect see the real-data experiment ({REAL_DATA_README}) and the phantom "
           f"experiment ({PHANTOM_README}).")
    if diff <= 0:
        return line + f" {NO_GAIN}: Stage 2 {s2} is not above the baseline {b}." + see
    if gain_significant and not organ_worse:
        return line + (f" Stage 2 is ahead on tumour Dice in this short CPU run ({cases} phantom cases, one seed: "
                       "a small sample).")
    if gain_significant:
        return line + " Stage 2 gains tumour Dice but loses organ Dice, both significantly: a trade-off, not a clear gain." + see
    return line + (f" {NO_GAIN} that the paired test can tell from chance ({cases} cases, one seed)"
                   + (", and its organ Dice is significantly worse." if organ_worse else ".")) + see


def _arm_dice(value) -> float | None:
    """A tumour Dice from an arm's entry: a number, or a dict with a mean (tolerant of extra keys)."""
    if isinstance(value, dict):
        value = value.get("mean", value.get("value"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_fewlabel_result(path: str | os.PathLike) -> dict[str, float] | None:
    """Tumour Dice per arm of the stored real-data experiment (``{"arms": {name: {"dice": ...}}}``);
    None when the file is absent or holds no arm with a Dice."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        arms = json.loads(path.read_text(encoding="utf-8")).get("arms") or {}
    except (OSError, ValueError, AttributeError):
        return None
    found = {}
    for name, arm in arms.items() if isinstance(arms, dict) else ():
        d = _arm_dice(arm.get("dice") if isinstance(arm, dict) else None)
        if d is not None:
            found[name] = d
    return found or None


def read_phantom_result(path: str | os.PathLike) -> dict[str, float] | None:
    """Tumour Dice per arm on the usual-tumour test cohort of the stored phantom experiment
    (``experiment_stage2.json``: ``summaries.test.<arm>.metrics.tumour_dice.mean``); None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        test = json.loads(path.read_text(encoding="utf-8"))["summaries"]["test"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    found = {}
    for name, summary in test.items():
        try:
            d = _arm_dice(summary["metrics"]["tumour_dice"])
        except (KeyError, TypeError):
            d = None
        if d is not None:
            found[name] = d
    return found or None


def _arms_text(arms: dict[str, float]) -> str:
    return ", ".join(f"{name} {d:.3f}" for name, d in arms.items())


BASELINE_ARMS = ("stage0", "none", "copy_paste")
SYNTHESIS_ARMS = ("procedural", "generator")
ARM_WORDS = {"stage0": "stage0 (the K labelled crops alone)", "none": "none (plus healthy host chests)",
             "copy_paste": "copy_paste (the same real nodules pasted into the hosts)",
             "procedural": "procedural (profile-drawn nodules)", "generator": "generator (Stage-1 generator)"}


def _best(arms: dict, names, key: str) -> str | None:
    have = [a for a in names if isinstance(arms.get(a), dict) and arms[a].get(key) is not None]
    return max(have, key=lambda a: arms[a][key]) if have else None


def _paired(result: dict, a: str, b: str, test: str) -> tuple[float, float | None] | None:
    """(mean of a - b, paired t-test p) on ``test`` from the stored comparisons (either order); None if absent."""
    comps = result.get("comparisons") or {}
    for key, sign in ((f"{a}_vs_{b}", 1.0), (f"{b}_vs_{a}", -1.0)):
        c = (comps.get(key) or {}).get(test)
        if isinstance(c, dict) and c.get("mean_diff") is not None:
            return sign * float(c["mean_diff"]), c.get("t_p")
    return None


def fewlabel_sentences(result: dict) -> list[str]:
    """The stored real-CT few-label result in words (``fewlabel_lung.json``): what the fair metric (shifted
    test crops) says of synthesis against the baselines, what it does on the whole-chest composites and at
    what cost in false positives, and why; every figure read from ``result``. Empty when it lacks the
    shifted scores."""
    arms = result.get("arms") or {}
    syn, base = _best(arms, SYNTHESIS_ARMS, "dice_shifted"), _best(arms, BASELINE_ARMS, "dice_shifted")
    if syn is None or base is None:
        return []
    seeds = max((int(a.get("seeds") or 0) for a in arms.values() if isinstance(a, dict)), default=0)
    done = (f"; {result['runs_done']} of {result['runs_planned']} planned runs"
            if result.get("runs_done") is not None and result.get("runs_planned") else "")
    shifted = ", ".join(f"{a} {arms[a]['dice_shifted']:.3f}" for a in (*BASELINE_ARMS, *SYNTHESIS_ARMS)
                        if isinstance(arms.get(a), dict) and arms[a].get("dice_shifted") is not None)
    out = [f"Real CT, the few-label lung experiment (LIDC-IDRI nodules, K = {result.get('k')} labelled, "
           f"{seeds} seed{'s' if seeds != 1 else ''}{done}): tumour Dice on the shifted test crops, the fair "
           f"metric (no position shortcut), is {shifted}."]
    pair = _paired(result, syn, base, "shifted")
    d, p = pair if pair is not None else (arms[syn]["dice_shifted"] - arms[base]["dice_shifted"], None)
    if d > 0 and p is not None and p < SIGNIFICANCE_LEVEL:
        verdict = "synthesis beat the baselines there"
    elif d > 0:
        verdict = "synthesis has not beaten the baselines there by more than chance"
    else:
        verdict = "synthesis has not beaten the labelled-only and copy-paste baselines there"
    out.append(f"So {verdict}: the best synthesis arm, {ARM_WORDS[syn]}, against the best baseline, "
               f"{ARM_WORDS[base]}: {signed(d)}, {significance(d, p)}.")
    comp_syn = _best(arms, SYNTHESIS_ARMS, "dice_composite")
    ref = "copy_paste" if isinstance(arms.get("copy_paste"), dict) else _best(arms, BASELINE_ARMS, "dice_composite")
    pair = _paired(result, comp_syn, ref, "composite") if comp_syn and ref else None
    if pair is not None and arms[ref].get("dice_composite") is not None:
        d, p = pair
        helps = "helps" if d > 0 and p is not None and p < SIGNIFICANCE_LEVEL else "does not clearly help"
        text = (f"On the composites (held-out nodules pasted into the real lung of whole test chests), {comp_syn} "
                f"synthesis {helps} against {ref}: Dice {arms[comp_syn]['dice_composite']:.3f} vs "
                f"{arms[ref]['dice_composite']:.3f} ({signed(d)}, {significance(d, p)})")
        fp = [((arms[a].get("froc_in_lung") or {}).get("operating_point") or {}).get("fp_per_scan")
              for a in (comp_syn, ref)]
        if None not in fp:
            more = "more" if fp[0] > fp[1] else "fewer"
            text += (f", {'but' if (more == 'more') == (d > 0) else 'and'} with {more} false positives in the lung "
                     f"of the whole test chests ({fp[0]:.0f} vs {fp[1]:.0f} per scan at threshold 0.5)")
        out.append(text + ".")
    host = _paired(result, "none", "stage0", "shifted")
    if host is not None and host[0] < 0 and host[1] is not None and host[1] < SIGNIFICANCE_LEVEL:
        out.append(f"Why: adding the healthy host chests alone (none against stage0) already costs {signed(host[0])} "
                   f"shifted Dice ({significance(host[0], host[1])}), and no synthesis arm drawn into those host "
                   f"patches makes it up; the diagnosis is in {REAL_DATA_README}.")
    return out


def phantom_sentences(result: dict) -> list[str]:
    """The stored phantom experiment's paired comparisons in words (``experiment_stage2.json``, the usual-tumour
    test cohort): each synthesis arm against the no-synthesis arm ``none``, tumour and organ Dice, with their
    significance; and what the file cannot say (no paired test against ``stage0``)."""
    comps = ((result.get("comparisons") or {}).get("test") or {})
    out = []
    for key, c in comps.items():
        try:
            a, b = c["a"]["name"], c["b"]["name"]
            t, o = c["metrics"]["tumour_dice"], c["metrics"]["organ_dice"]
            tp, op = (t.get("t_test") or {}).get("p"), (o.get("t_test") or {}).get("p")
            out.append(f"{b} against {a}: tumour Dice {t['mean_a']:.3f} -> {t['mean_b']:.3f} "
                       f"({signed(t['mean_diff'])}, {significance(t['mean_diff'], tp)}), organ Dice "
                       f"{o['mean_a']:.3f} -> {o['mean_b']:.3f} ({signed(o['mean_diff'])}, {significance(o['mean_diff'], op)})")
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    if not out:
        return []
    against_stage0 = any("stage0" in k for k in comps)
    return ["Paired tests on the same phantoms (t-test, significant below 0.05): " + "; ".join(out) + "."
            + ("" if against_stage0 else " The file holds no paired test against the labelled-only stage0, so "
               "whether synthesis beats it is not shown; on phantoms the synthetic and the test tumours come "
               "from similar rules, the easy case for synthesis.")]


def stored_results_lines(benchmarks: Path | None = None) -> list[str]:
    """The stored real-data and phantom experiments in words (real CT first): tumour Dice per arm and, when the
    files hold them, the paired comparisons with their significance."""
    bench = BENCHMARKS_DIR if benchmarks is None else Path(benchmarks)
    if not bench.is_dir():
        return ["stored experiments: benchmarks/ is not in this installation (a pip install); see "
                f"{REAL_DATA_README} and {PHANTOM_README} in the source repository."]
    results = bench / "results"
    real = read_fewlabel_result(results / "fewlabel_lung.json")
    if real is None:
        lines = ["real-data experiment (few labelled lung CT, benchmarks/results/fewlabel_lung.json): not yet "
                 "measured; run `python benchmarks/experiment_fewlabel_lung.py --quick`."]
    else:
        try:
            words = fewlabel_sentences(json.loads((results / "fewlabel_lung.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            words = []
        lines = [" ".join(words) if words else
                 "real-data experiment (few labelled lung CT, benchmarks/results/fewlabel_lung.json), tumour Dice "
                 f"per arm: {_arms_text(real)}."]
    phantom = read_phantom_result(results / "experiment_stage2.json")
    if phantom is None:
        lines.append("phantom experiment (benchmarks/results/experiment_stage2.json): not yet measured; run "
                     "`python benchmarks/experiment_stage2.py --out /tmp/stage2-exp`.")
    else:
        try:
            stored = json.loads((results / "experiment_stage2.json").read_text(encoding="utf-8"))
            st = stored.get("settings") or {}
            where = f"{st['steps']} steps, {st['test']} held-aside liver phantoms, "
        except (KeyError, TypeError, AttributeError, ValueError):
            stored, where = {}, ""
        words = phantom_sentences(stored) if isinstance(stored, dict) else []
        lines.append(f"Phantom experiment ({where}one seed; benchmarks/results/experiment_stage2.json), tumour Dice "
                     f"per arm (stage0 = labelled-only baseline): {_arms_text(phantom)}." + "".join(" " + w for w in words))
    return lines


def _stored_section(log: Callable[[str], None]) -> dict:
    """The stored results of the longer experiments, on the page and in the terminal."""
    lines = stored_results_lines()
    for ln in lines:
        log(ln)
    return {
        "heading": "Stored results of the longer experiments (real CT first)",
        "text": " ".join(lines) + f" Details: {REAL_DATA_README}; {PHANTOM_README}. Nothing here is rerun by the "
                "demo: the figures are read from the stored JSON.",
    }


def _stage2_options(out: Path, synthesis: str) -> SynthesisOptions:
    """The synthesis options of the demo's Stage 2 (liver phantoms): the Stage-1 generator with the baseline
    as its QC segmentor, or the built-in liver profile, or neither (procedural)."""
    if synthesis == "generator":
        return SynthesisOptions("liver", generator=out / "stage1-run" / "generator.pt",
                                qc_segmentor=out / "baseline-run" / "best.pt")
    if synthesis == "profile":
        return SynthesisOptions("liver", profile="builtin:liver")
    return SynthesisOptions("liver")


def _side_by_side(image, rule, learned) -> bytes:
    """Axial slice through the lesion: original, rule-based, learned (radiological display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib only when drawing
    from matplotlib.figure import Figure  # deferred: as above

    m = rule.masks[0].full(image.shape)
    z = int(np.argmax(m.sum(axis=(0, 1))))
    idx = np.argwhere(m[:, :, z])
    c = idx.mean(axis=0).astype(int)
    h = 40
    box = (slice(max(0, c[0] - h), c[0] + h), slice(max(0, c[1] - h), c[1] + h))
    fig = Figure(figsize=(9, 3.4), dpi=100, facecolor="#111111")
    FigureCanvasAgg(fig)
    sl = lambda a: np.flipud(np.asarray(a[box[0], box[1], z], float).T)[:, ::-1]  # noqa: E731
    for k, (title, arr) in enumerate((("original", image), ("rule-based", rule.image.array),
                                       ("learned (Stage 1)", learned.image.array))):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(sl(arr), cmap="gray", vmin=-175, vmax=250)
        if k:
            ax.contour(sl(m), levels=[0.5], colors="#ffd60a", linewidths=0.6)
        ax.set_title(title, color="#e8e8e8", fontsize=10)
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor(), bbox_inches="tight")
    return buf.getvalue()


def _draw_prediction(image, gt_tumour, pred_tumour, gt_organ, pred_organ, path: Path) -> None:
    """Axial slice through the ground-truth tumour: image, truth and prediction contours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib (about 1 s to import) only for the figure
    from matplotlib.figure import Figure  # deferred: matplotlib (about 1 s to import) only for the figure


    z = int(np.argmax(gt_tumour.sum(axis=(0, 1)))) if gt_tumour.any() else image.shape[2] // 2
    fig = Figure(figsize=(8, 4), dpi=100, facecolor="#111111")
    FigureCanvasAgg(fig)
    for k, (title, show_pred) in enumerate((("ground truth", False), ("prediction", True))):
        ax = fig.add_subplot(1, 2, k + 1)
        # Phantoms are RAS: transpose and flip for radiological display (anterior up, right on the left).
        sl = lambda a: np.flipud(np.asarray(a[:, :, z], float).T)[:, ::-1]  # noqa: E731
        ax.imshow(sl(image), cmap="gray", vmin=-175, vmax=250)
        if show_pred:
            ax.contour(sl(pred_organ), levels=[0.5], colors="#4ea8de", linewidths=0.8)
            ax.contour(sl(pred_tumour), levels=[0.5], colors="#ffd60a", linewidths=1.2)
        else:
            ax.contour(sl(gt_organ), levels=[0.5], colors="#4ea8de", linewidths=0.8)
            ax.contour(sl(gt_tumour), levels=[0.5], colors="#ef233c", linewidths=1.2)
        ax.set_title(title, color="#e8e8e8", fontsize=10)
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor(), bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())
