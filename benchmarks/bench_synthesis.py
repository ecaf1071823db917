#!/usr/bin/env python
"""Synthesis speed and memory figures, printed as one JSON object.

Figures (targets from issue #2):

* ``ms_per_tumour_96_liver_median`` - median wall time of one rule-based
  tumour (size ``mix``) in a 96^3 liver patch at 1.5 mm, no generator
  (target <= 30 ms on 2 CPU cores); per size class too.
* ``startup_s`` - a fresh interpreter: ``import freetumor`` to the first
  tumour on that patch (target <= 3 s).
* ``peak_rss_mb`` - peak resident memory of a fresh process that runs the
  whole-volume ``synthesize`` on the 512x512 slab, PNG included (target <= 1.5 GB).
* ``synthesize_vs_nibabel_ratio`` - whole-volume synthesis of the 512x512x20
  slab (load image and label, one tumour, write image, label and JSON) divided
  by a bare nibabel load + save of the same image, medians of alternating runs
  in one process (target <= 1.5). ``..._with_png`` adds the PNG figure.

Learned synthesis (issue #4), on an abdominal phantom at 1.5 mm, the paper-size
networks (random weights: time does not depend on them) on this CPU:

* ``learned.ms_per_tumour`` - mean time of one tumour per size class (and the
  ``mix`` expectation) with the generator run on the lesion box plus a 16-voxel
  margin (``bbox``) or on the 96^3 patch around it (``patch``, the paper's
  design); ``..._with_qc`` adds quality control with the SwinUNETR-48 segmentor
  on the box plus an 8-voxel margin, or on the 96^3 patch.
* ``learned.paper_design_vs_ours_ratio`` - (patch generator + patch segmentor) /
  (bbox generator + bbox segmentor) per tumour (target >= 5).
* ``learned.realism_proxy`` (only with ``--generator`` and ``--segmentor``, trained
  checkpoints, e.g. from ``make demo``): for the same tumours, the mean absolute
  HU difference inside the lesion between bbox and patch generation, and the QC
  recall and decisions in both modes.

The slab is ``../shared/datasets/totalseg_example/slab1mm_image.nii.gz`` when
present; otherwise a 512x512x20 phantom at 0.98 x 0.98 x 2 mm stands in (the
``slab_source`` field says which).

Issue 14 (``--learned``, :func:`learned_cost_figures`): the per-tumour cost of the paper design
(patch generator + patch SwinUNETR-48 QC) and of ``synthesize``'s defaults, their ratio
``learned_cost_ratio_mix`` (size mix) and a per-component breakdown; written to
``benchmarks/results/bench_synthesis_learned.json``.

Run: ``python benchmarks/bench_synthesis.py [--repeats N] [--learned-repeats N] [--generator G.pt --segmentor S.pt]``;
``python benchmarks/bench_synthesis.py --learned --quick`` (20 paper-size tumours: about 4 minutes
on an idle 2-core CPU by the per-tumour times of docs/benchmarks/performance.md; not yet timed as a whole)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLAB = REPO.parent / "shared" / "datasets" / "totalseg_example"


def liver_patch(tmp: Path):
    """A 96^3 patch at 1.5 mm centred on the liver of an abdominal phantom."""
    from freetumor.io import Volume, save_volume
    from freetumor.phantom import make_case

    image, label = make_case("abdomen", seed=0, spacing=(1.5, 1.5, 1.5), shape=(224, 176, 120))
    c = np.round(np.argwhere(label.array == 1).mean(axis=0)).astype(int)
    lo = np.clip(c - 48, 0, np.asarray(image.shape) - 96)
    sl = tuple(slice(int(a), int(a) + 96) for a in lo)
    aff = image.affine.copy()
    aff[:3, 3] = image.voxel_to_mm(lo)
    img, lab = Volume(image.array[sl].copy(), aff), Volume(label.array[sl].copy(), aff)
    save_volume(img, tmp / "patch_image.nii.gz")
    save_volume(lab, tmp / "patch_label.nii.gz")
    return img, lab


def slab_pair(tmp: Path):
    if (SLAB / "slab1mm_image.nii.gz").exists():
        return SLAB / "slab1mm_image.nii.gz", SLAB / "slab1mm_label_freetumor7.nii.gz", "totalseg_example/slab1mm"
    from freetumor.io import save_volume
    from freetumor.phantom import make_case

    image, label = make_case("abdomen", seed=0, spacing=(0.977, 0.977, 2.0), shape=(512, 512, 20))
    save_volume(image, tmp / "slab_image.nii.gz")
    save_volume(label, tmp / "slab_label.nii.gz")
    return tmp / "slab_image.nii.gz", tmp / "slab_label.nii.gz", "phantom 512x512x20"


def per_tumour_ms(img, lab, repeats: int) -> dict:
    from freetumor.synthesis import Synthesizer

    out = {}
    for size in ("mix", "tiny", "small", "medium", "large"):
        synth = Synthesizer("liver", size=size)
        synth(img, lab, seed=0)  # warm-up
        times = []
        for seed in range(repeats):
            t = time.perf_counter()
            synth(img, lab, seed=seed + 1)
            times.append((time.perf_counter() - t) * 1000)
        out[size] = round(statistics.median(times), 2)
    return out


STARTUP = r"""
import time, sys
t0 = time.perf_counter()
import freetumor
from freetumor.io import load_volume
from freetumor.synthesis import Synthesizer
img, lab = load_volume(sys.argv[1]), load_volume(sys.argv[2])
Synthesizer("liver")(img, lab, seed=0)
print(time.perf_counter() - t0)
"""

PEAK = r"""
import resource, sys
from freetumor.synthesis import SynthesisOptions, build_synthesizer, synthesize_case
synthesize_case(build_synthesizer(SynthesisOptions("liver")), sys.argv[1], sys.argv[2], sys.argv[3], count=3, seed=0,
                png=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def run_py(code: str, *args) -> float:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def whole_volume_ratio(image: Path, label: Path, tmp: Path, repeats: int) -> dict:
    import nibabel as nib

    from freetumor.synthesis import SynthesisOptions, build_synthesizer, synthesize_case

    synth = build_synthesizer(SynthesisOptions("liver"))

    def bare():
        img = nib.load(str(image))
        data = np.asanyarray(img.dataobj)
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(tmp / "bare.nii.gz"))

    bare()
    synthesize_case(synth, image, label, tmp / "warm", seed=0, png=True)
    b, s, p = [], [], []
    for k in range(repeats):
        t = time.perf_counter(); bare(); b.append(time.perf_counter() - t)
        t = time.perf_counter(); synthesize_case(synth, image, label, tmp / f"s{k}", seed=k, png=False)
        s.append(time.perf_counter() - t)
        t = time.perf_counter(); synthesize_case(synth, image, label, tmp / f"p{k}", seed=k, png=True)
        p.append(time.perf_counter() - t)
    mb, ms, mp = statistics.median(b), statistics.median(s), statistics.median(p)
    return {
        "nibabel_load_save_s": round(mb, 4),
        "synthesize_s": round(ms, 4),
        "synthesize_with_png_s": round(mp, 4),
        "synthesize_vs_nibabel_ratio": round(ms / mb, 3),
        "synthesize_with_png_vs_nibabel_ratio": round(mp / mb, 3),
    }


def _timed_tumours(synth, image, label, seeds) -> list[float]:
    out = []
    for sd in seeds:
        t = time.perf_counter()
        synth(image, label, seed=sd)
        out.append((time.perf_counter() - t) * 1000)
    return out


def learned_figures(repeats: int) -> dict:
    """Paper-size generator and SwinUNETR-48 segmentor: bbox vs full-patch context, with and without QC.

    ``repeats`` tumours per size class; the ``mix`` figures weight the classes with the liver's
    FreeTumor probabilities (uniform), i.e. the expected cost of a tumour drawn with ``mix``.
    """
    import torch

    from freetumor.config import load_config
    from freetumor.generator import LearnedDifference
    from freetumor.models import build_generator
    from freetumor.models import build_model
    from freetumor.organs import get_organ
    from freetumor.phantom import make_case
    from freetumor.config import QCConfig
    from freetumor.quality import QualityControl
    from freetumor.synthesis import Synthesizer

    torch.manual_seed(0)
    cfg = load_config("liver-paper")
    gen = build_generator(cfg).eval()
    seg = build_model(cfg).eval()
    image, label = make_case("abdomen", seed=0, spacing=(1.5, 1.5, 1.5), shape=(224, 176, 120))
    # QC thresholds off: time every tumour once (a random segmentor would reject them all).
    lax = QCConfig(threshold=0.0, min_inside=0.0, min_visible_mm3=0.0, contrast_hu=(-1e9, 1e9))
    seeds = list(range(1, repeats + 1))
    probs = dict(get_organ("liver").size_probs)
    modes = {
        "rule_based": lambda size: Synthesizer("liver", size=size),
        "bbox": lambda size: Synthesizer("liver", size=size, difference=LearnedDifference((gen, cfg), context="bbox")),
        "patch": lambda size: Synthesizer("liver", size=size,
                                          difference=LearnedDifference((gen, cfg), context="patch")),
        "bbox_with_qc": lambda size: Synthesizer(
            "liver", size=size, difference=LearnedDifference((gen, cfg), context="bbox"),
            qc=QualityControl((seg, cfg), lax, context="bbox", margin=cfg.synth.context_margin // 2),
            qc_max_tries=1),
        "bbox_generator_patch_qc": lambda size: Synthesizer(  # the defaults of synthesize
            "liver", size=size, difference=LearnedDifference((gen, cfg), context="bbox"),
            qc=QualityControl((seg, cfg), lax, context="patch"), qc_max_tries=1),
        "patch_with_qc": lambda size: Synthesizer(
            "liver", size=size, difference=LearnedDifference((gen, cfg), context="patch"),
            qc=QualityControl((seg, cfg), lax, context="patch"), qc_max_tries=1),
    }
    res: dict = {"tumours_per_size": repeats, "volume_shape": list(image.shape), "spacing_mm": 1.5,
                 "generator_margin_vox": cfg.synth.context_margin,
                 "qc_margin_vox": cfg.synth.context_margin // 2, "ms_per_tumour": {}}
    with torch.inference_mode():
        modes["bbox_with_qc"]("tiny")(image, label, seed=0)  # warm-up
        for mode, make in modes.items():
            by_size = {}
            for size in probs:
                by_size[size] = round(statistics.mean(_timed_tumours(make(size), image, label, seeds)), 1)
            by_size["mix"] = round(sum(probs[k] * by_size[k] for k in probs), 1)
            res["ms_per_tumour"][mode] = by_size
    t = res["ms_per_tumour"]
    res["paper_design_vs_ours_ratio"] = {k: round(t.patch_with_qc[k] / t.bbox_with_qc[k], 2)
                                         for k in t.bbox}
    res["generator_patch_vs_bbox_ratio"] = {k: round(t.patch[k] / t.bbox[k], 2) for k in t.bbox}
    res["paper_design_vs_defaults_ratio"] = {k: round(t.patch_with_qc[k] / t.bbox_generator_patch_qc[k], 2)
                                             for k in t.bbox}
    return res


def learned_cost_figures(per_size: int = 1, batched_count: int = 2) -> dict:
    """Issue 14: the per-tumour cost of the paper design and of the defaults, with a breakdown.

    Paper-size networks (random weights: the time does not depend on them) on an abdominal
    phantom at 1.5 mm; QC thresholds lax (every tumour accepted at its first try, so each costs one
    QC verdict). Per size class ``per_size`` cases:

    * ``paper_design``: patch generator + patch SwinUNETR-48 QC, one tumour per case;
    * ``defaults``: what ``synthesize`` does without options (its generator context, QC on the
      patch, ``qc.batch_size``), one tumour per case (the CLI's ``--count 1``);
    * ``defaults_count{batched_count}``: the same with ``batched_count`` tumours per case, judged
      in one batched forward;
    * ``fit_qc``: the defaults with QC on the ``fit`` context (lesion box + ``qc.margin``, rounded up
      to the input multiple; not the default: its decisions disagree with the patch's, see
      ``benchmarks/qc_context_agreement.py``).

    ``mix`` weights the size classes with the liver's probabilities. ``breakdown_ms`` splits each
    mode's per-tumour time into generator, QC forwards, cheap checks and the rest (drawing, blending).
    """
    import dataclasses

    import torch

    import freetumor.quality as quality
    from freetumor.config import QCConfig, load_config
    from freetumor.models import build_generator, build_model
    from freetumor.organs import get_organ
    from freetumor.phantom import make_case
    from freetumor.synthesis import SynthesisOptions, build_synthesizer

    torch.manual_seed(0)
    cfg = load_config("liver-paper")
    gen, seg = build_generator(cfg).eval(), build_model(cfg).eval()
    image, label = make_case("abdomen", seed=0, spacing=(1.5, 1.5, 1.5), shape=(224, 176, 120))
    lax = dict(threshold=0.0, min_inside=0.0, min_visible_mm3=0.0, contrast_hu=[-1e9, 1e9])
    probs = dict(get_organ("liver").size_probs)

    def build(context, qc_context):
        s = build_synthesizer(SynthesisOptions("liver", generator=(gen, cfg), qc_segmentor=(seg, cfg),
                                               context=context, qc_context=qc_context, qc_max_tries=1))
        s.qc.settings = dataclasses.replace(s.qc.settings, **lax)
        return s

    modes = {  # name: (generator context, QC context, tumours per case, QC batch size)
        "paper_design": ("patch", "patch", 1, 1),
        "defaults": (None, None, 1, None),
        f"defaults_count{batched_count}": (None, None, batched_count, None),
        "fit_qc": (None, "fit", 1, None),
    }
    res: dict = {"volume_shape": list(image.shape), "spacing_mm": 1.5, "cases_per_size": per_size,
                 "qc_batch_size": QCConfig().batch_size, "generator_context_default": cfg.synth.context,
                 "qc_context_default": QCConfig().context, "qc_margin": QCConfig().margin,
                 "ms_per_tumour": {}, "breakdown_ms": {}}
    cheap = quality.cheap_scores
    with torch.inference_mode():
        build(None, "fit")(image, label, seed=0)  # warm-up
        for mode, (ctx, qctx, count, batch) in modes.items():
            synth = build(ctx, qctx)
            if batch is not None:
                synth.qc.settings = dataclasses.replace(synth.qc.settings, batch_size=batch)
            clock = {}

            def wrap(name, fn):
                def timed(*a, **kw):
                    t = time.perf_counter()
                    try:
                        return fn(*a, **kw)
                    finally:
                        clock[name] = clock.get(name, 0.0) + time.perf_counter() - t
                return timed

            synth.difference.for_volume = wrap("generator", synth.difference.for_volume)
            synth.qc.predict_many = wrap("qc_forward", synth.qc.predict_many)
            quality.cheap_scores = wrap("cheap_checks", cheap)
            by_size, total, n_all = {}, 0.0, 0
            for size in probs:
                synth.size = size
                times = []
                for case in range(per_size):
                    t = time.perf_counter()
                    synth(image, label, count=count, seed=1 + case)
                    times.append(time.perf_counter() - t)
                by_size[size] = round(1000 * sum(times) / (per_size * count), 1)
                total += sum(times)
                n_all += per_size * count
            quality.cheap_scores = cheap
            by_size["mix"] = round(sum(probs[k] * by_size[k] for k in probs), 1)
            res["ms_per_tumour"][mode] = by_size
            parts = {k: round(1000 * v / n_all, 1) for k, v in clock.items()}
            parts["other"] = round(1000 * total / n_all - sum(parts.values()), 1)
            parts["qc_forwards"] = synth.qc.forwards
            parts["tumours"] = n_all
            res["breakdown_ms"][mode] = parts
            print(f"[bench_synthesis] {mode}: {by_size} ms per tumour; {parts}", file=sys.stderr, flush=True)
    t = res["ms_per_tumour"]
    res["learned_cost_ratio_mix"] = round(t["paper_design"]["mix"] / t["defaults"]["mix"], 3)
    res[f"learned_cost_ratio_mix_count{batched_count}"] = round(
        t["paper_design"]["mix"] / t[f"defaults_count{batched_count}"]["mix"], 3)
    res["learned_cost_ratio_mix_fit_qc"] = round(t["paper_design"]["mix"] / t["fit_qc"]["mix"], 3)
    return res


def realism_proxy(generator: Path, segmentor: Path, repeats: int) -> dict:
    """Trained models: how much bbox generation differs from full-patch generation on the same tumours."""
    from freetumor.generator import LearnedDifference
    from freetumor.phantom import make_case
    from freetumor.config import QCConfig
    from freetumor.quality import QualityControl
    from freetumor.synthesis import Synthesizer

    diffs, lesion_shift, rec = [], [], {"bbox": [], "patch": []}
    agree = 0
    n = 0
    settings = QCConfig()
    for case in range(max(1, repeats // 4)):
        image, label = make_case("abdomen", seed=100 + case, tumour=False)
        for sd in range(4):
            outs = {}
            for ctx in ("bbox", "patch"):
                synth = Synthesizer("liver", difference=LearnedDifference(generator, context=ctx))
                outs[ctx] = synth(image, label, seed=sd)
                qc = QualityControl(segmentor, settings, context=ctx)
                m = outs[ctx].masks[0]
                d = qc.check_lesion(image.array[_grow(m.slices, image.shape)],
                                    outs[ctx].image.array, _grow(m.slices, image.shape),
                                    m.full(image.shape)[_grow(m.slices, image.shape)],
                                    (label.array == 1) | (label.array == 2), _grid(image), _liver())
                rec[ctx].append(d)
            m = outs["bbox"].masks[0].full(image.shape)
            a = outs["bbox"].image.array[m].astype(float)
            b = outs["patch"].image.array[m].astype(float)
            diffs.append(float(np.abs(a - b).mean()))
            lesion_shift.append(float(abs(a.mean() - b.mean())))
            agree += rec["bbox"][-1].accepted == rec["patch"][-1].accepted
            n += 1
    return {
        "tumours": n,
        "mean_abs_hu_difference_in_lesion": round(statistics.mean(diffs), 2),
        "mean_lesion_hu_shift": round(statistics.mean(lesion_shift), 2),
        "qc_recall_bbox": round(statistics.mean(d.scores.recall for d in rec["bbox"]), 3),
        "qc_recall_patch": round(statistics.mean(d.scores.recall for d in rec["patch"]), 3),
        "qc_accepted_bbox": round(statistics.mean(d.accepted for d in rec["bbox"]), 3),
        "qc_accepted_patch": round(statistics.mean(d.accepted for d in rec["patch"]), 3),
        "qc_decision_agreement": round(agree / n, 3),
    }


def _grow(slices, shape, g=6):
    return tuple(slice(max(0, s.start - g), min(n, s.stop + g)) for s, n in zip(slices, shape))


def _grid(vol):
    from freetumor.grids import Grid

    return Grid.of(vol)


def _liver():
    from freetumor.organs import get_organ

    return get_organ("liver")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="tumours per size class / whole-volume runs // 3")
    ap.add_argument("--learned-repeats", type=int, default=3, help="tumours per size class and learned mode (0: skip)")
    ap.add_argument("--generator", type=Path, help="trained generator.pt for the realism proxy")
    ap.add_argument("--segmentor", type=Path, help="trained segmentor (best.pt) for the realism proxy")
    ap.add_argument("--only-learned", action="store_true", help="skip the rule-based figures")
    ap.add_argument("--learned", action="store_true",
                    help="only the learned-synthesis cost of issue 14: paper design vs defaults, with a breakdown "
                         "(written to benchmarks/results/bench_synthesis_learned.json)")
    ap.add_argument("--quick", action="store_true", help="with --learned: one case per size class, 2 tumours per "
                                                         "case in the batched mode (20 paper-size tumours)")
    args = ap.parse_args()
    if args.learned:
        import torch

        t0 = time.perf_counter()
        fig = learned_cost_figures(1 if args.quick else max(1, args.learned_repeats), 2 if args.quick else 4)
        t = fig["ms_per_tumour"]
        out = {"benchmark": "bench_synthesis --learned",
               "command": "python benchmarks/bench_synthesis.py " + " ".join(sys.argv[1:]),
               "data": "phantom (abdomen, 1.5 mm), random-weight paper-size networks",
               "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "device": "cpu", "platform": platform.platform()},
               "paper_design_ms_per_tumour": t["paper_design"],
               "defaults_ms_per_tumour": t["defaults"],
               "learned_cost_ratio_mix": fig["learned_cost_ratio_mix"],
               "target_learned_cost_ratio_mix": 5,
               "learned": fig}
        out["total_wall_s"] = round(time.perf_counter() - t0, 1)
        text = json.dumps(out, indent=2)
        (REPO / "benchmarks" / "results" / "bench_synthesis_learned.json").write_text(text + "\n")
        print(text)
        return
    if args.only_learned:
        out = {"benchmark": "bench_synthesis (learned only)", "machine": {"cpus": os.cpu_count()}}
        if args.learned_repeats:
            out["learned"] = learned_figures(args.learned_repeats)
        if args.generator and args.segmentor:
            out["learned_realism_proxy"] = realism_proxy(args.generator, args.segmentor, 16)
        print(json.dumps(out, indent=2))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        img, lab = liver_patch(tmp)
        per = per_tumour_ms(img, lab, args.repeats)
        startup = [run_py(STARTUP, tmp / "patch_image.nii.gz", tmp / "patch_label.nii.gz") for _ in range(3)]
        s_img, s_lab, source = slab_pair(tmp)
        whole = whole_volume_ratio(s_img, s_lab, tmp, max(3, args.repeats // 3))
        peak = run_py(PEAK, s_img, s_lab, tmp / "peak")
    result = {
        "benchmark": "bench_synthesis",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "ms_per_tumour_96_liver_median": per["mix"],
        "ms_per_tumour_96_liver_by_size": {k: v for k, v in per.items() if k != "mix"},
        "startup_s": round(statistics.median(startup), 3),
        "peak_rss_mb": round(peak, 1),
        "slab_source": source,
        **whole,
        **({"learned": learned_figures(args.learned_repeats)} if args.learned_repeats else {}),
        **({"learned_realism_proxy": realism_proxy(args.generator, args.segmentor, 16)}
           if args.generator and args.segmentor else {}),
        "targets": {
            "learned.paper_design_vs_ours_ratio": 5,
            "ms_per_tumour_96_liver_median": 30,
            "startup_s": 3,
            "peak_rss_mb": 1536,
            "synthesize_vs_nibabel_ratio": 1.5,
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
