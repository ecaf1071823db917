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


def run_demo(out: str | os.PathLike, *, seed: int = 0, cases: int = 2, log: Callable[[str], None] = print) -> Path:
    """Run the demo into ``out``; return the path of ``index.html``."""
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
