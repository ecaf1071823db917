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

import os
from pathlib import Path
from typing import Callable

from .data import load_datalist

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
    log: Callable[[str], None] = print,
) -> Path:
    """Run the demo into ``out``; return the path of ``index.html``.

    ``train_steps`` > 0 adds a short Stage-0 baseline training (cpu-tiny U-Net) on the
    abdominal phantoms and a prediction on a held-aside phantom case.
    """
    from .phantom import write_cohort
    from .report import lesion_table, write_html_page
    from .synthesis import synthesize_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    healthy: dict[str, list[dict]] = {}
    for region in ("abdomen", "chest"):
        dl = write_cohort(out / f"phantom-{region}", 2 * cases, seed=seed, region=region)
        entries = load_datalist(dl)
        healthy[region] = [e for e in entries if not e.get("tumour")]
        log(f"phantom {region}: {len(entries)} cases ({len(healthy[region])} healthy) -> {dl}")

    sections: list[dict] = []
    records: list[dict] = []
    syn_dir = out / "synthetic"
    for region, organ, size, count in DEMO_PLAN:
        images = []
        for k, entry in enumerate(healthy[region]):
            case = f"{Path(entry['image']).name.split('.')[0]}_{organ}"
            rec = synthesize_files(
                entry["image"], entry["label"], organ, syn_dir,
                count=count, size=size, seed=seed + k, case=case,
            )
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
    if train_steps > 0:
        sections.append(_baseline_section(out, train_steps, seed, log))
    page = out / "index.html"
    write_html_page(
        page,
        "freetumor demo: rule-based synthetic tumours on a procedural CT phantom",
        [{"heading": "What this is",
          "text": "A procedural phantom cohort was generated; synthetic tumours were placed in the healthy "
                  "organs with the FreeTumor rule-based shape, position and texture (no trained generator). "
                  "Files are in phantom-*/ (inputs) and synthetic/ (outputs, one JSON record per case)."}]
        + sections,
    )
    return page


def _baseline_section(out: Path, steps: int, seed: int, log: Callable[[str], None]) -> dict:
    """Train the cpu-tiny liver baseline on phantoms, predict a held-aside case, draw it."""
    import json

    import numpy as np

    from .config import load_config
    from .inference import predict_files
    from .io import load_volume
    from .phantom import write_cohort
    from .training.segmentation import train_segmentation

    cohort = write_cohort(out / "phantom-train", 5, seed=seed + 100, tumour_fraction=0.8)
    entries = json.loads(cohort.read_text())["training"]
    held = next(e for e in reversed(entries) if e["tumour"])
    train = [dict(e, fold=1) for e in entries if e is not held]
    # The held-aside case is the validation fold: the trainer never trains on it.
    datalist = cohort.parent / "datalist-demo.json"
    datalist.write_text(json.dumps({"label_map": "abdomen7", "training": train + [dict(held, fold=0)]}, indent=1))
    cfg = load_config("liver-cpu-tiny", [
        f"train.max_steps={steps}", "train.lr=5e-3", "train.warmup_steps=5", f"train.val_every={steps}",
        "data.pos=3.0", "data.neg=1.0", "data.flip_prob=0.0", "data.rot90_prob=0.0",
        f"train.checkpoint_every={steps}", "data.roi_size=[48,48,48]", "data.num_samples=4", "data.cache=true",
        "val.overlap=0.25", f"train.seed={seed}",
    ])
    run = out / "baseline-run"
    log(f"baseline: training the cpu-tiny liver segmentor for {steps} steps on {len(train)} phantom cases")
    if (run / "final.json").exists():  # a finished run from an earlier demo in the same folder
        summary = json.loads((run / "final.json").read_text())
    else:  # a fresh run, or one that was interrupted: continue it
        summary = train_segmentation(cfg, datalist, run, resume=(run / "last.pt").exists(), log=log, progress=False)
    pred_dir = out / "baseline-pred"
    predict_files(run / "best.pt", cohort.parent / held["image"], pred_dir, progress=False)
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
        "heading": "Stage 0: baseline segmentor on real labels only",
        "text": f"A cpu-tiny 3D U-Net (preset liver-cpu-tiny) trained for {summary['steps']} steps on "
                f"{len(train)} labelled phantom cases, then `freetumor predict` on the held-aside case "
                f"{name}: tumour Dice {d:.3f}. Red: ground-truth tumour, yellow: predicted tumour, "
                "blue: predicted liver. A short CPU run: a real baseline trains for hours on GPUs "
                "(preset liver-paper).",
        "images": [os.path.relpath(png, out)],
    }


def _draw_prediction(image, gt_tumour, pred_tumour, gt_organ, pred_organ, path: Path) -> None:
    """Axial slice through the ground-truth tumour: image, truth and prediction contours."""
    import io as _io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .io import write_bytes_atomic

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
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor(), bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())
