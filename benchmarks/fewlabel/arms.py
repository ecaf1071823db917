"""The arms and their recipes (``train-seg`` / ``train-synth`` settings of every model, the run tags of the
protocol options), training one arm of one (K, seed) or reusing its run folder, and what a run saw."""

from __future__ import annotations

import json
from pathlib import Path

from .base import sets, sh


ARMS = ("stage0", "none", "copy_paste", "procedural", "generator")
BASELINES = ("stage0", "none", "copy_paste")
SYNTH_ARMS = ("procedural", "generator")
# Geometry of every model: 1.25 x 1.25 x 2.5 mm, 32 x 32 x 8 patches (40 x 40 x 20 mm); sliding windows
# without overlap. Every arm: labelled crops at random offsets, host patches in the lung, batch Dice.
GEOMETRY = ["data.spacing=[1.25,1.25,2.5]", "data.roi_size=[32,32,8]", "data.num_samples=4", "data.cache=true",
            "val.overlap=0", "val.sw_batch_size=32", "data.crop_placement=random", "data.host_patches=organ",
            "train.dice_batch=true", "train.lr=3e-3", "train.warmup_steps=20"]
STAGE0_RECIPE = ["train.batch_size=1"]
HOST_RECIPE = ["train.batch_size=2", "data.labelled_share=0.5", "synth.online_on=hosts", "synth.online_prob=0.5"]
SYNTH_RECIPE = ["data.num_samples=2", "synth.probe_samples=4", "synth.epoch_steps=50", "train.batch_size=1"]
PLACEMENTS = ("random", "host")  # --placement: labelled crops at random offsets in air, or pasted into host lung
JUDGES = ("stage0", "none")      # --judge: the generator arm's frozen segmentor (Stage 1) and QC judge
RENDER_WORKERS = 2


def geometry(placement: str) -> list[str]:
    """GEOMETRY with the labelled crops' placement (``random``: the default, or ``host``)."""
    return [f"data.crop_placement={placement}" if g.startswith("data.crop_placement=") else g for g in GEOMETRY]


def stage0_recipe(placement: str) -> list[str]:
    """stage0 with host placement reads labelled samples only (share 1): the hosts are only their context."""
    return STAGE0_RECIPE + (["data.labelled_share=1.0"] if placement == "host" else [])


def run_tag(arm: str, placement: str, judge: str) -> str:
    """Suffix of an arm's run folders and result files; empty for the default protocol (random, stage0)."""
    tag = f"-j{judge}" if arm in ("generator", "stage1") and judge != "stage0" else ""
    return tag + (f"-{placement}" if placement != "random" else "")


def train_seg(run: Path, datalist: Path, recipe: list[str], seed: int, extra: list, steps: int, log: list,
              placement: str = "random") -> Path:
    if not (run / "final.json").exists():
        resume = ["--resume"] if (run / "last.pt").exists() else []
        every = max(1, steps // 5)
        sh(["train-seg", "--config", "lung-cpu-tiny", "--datalist", datalist, "--out", run, "--max-steps", steps,
            *sets([*geometry(placement), *recipe, f"train.seed={seed}", f"train.val_every={every}",
                   f"train.checkpoint_every={every}"]), *extra, *resume], log, quiet=False)
    return run / "best.pt"


def train_synth(run: Path, labelled: Path, hosts: Path, segmentor: Path, seed: int, steps: int, log: list,
                placement: str = "random") -> Path:
    if not (run / "final.json").exists():
        resume = ["--resume"] if (run / "last.pt").exists() else []
        sh(["train-synth", "--config", "lung-cpu-tiny", "--datalist", labelled, "--unlabeled", hosts,
            "--segmentor", segmentor, "--out", run, "--max-steps", steps,
            *sets([*geometry(placement), *SYNTH_RECIPE, f"train.seed={seed}"]), *resume], log, quiet=False)
    return run / "generator.pt"


def best_val(run: Path) -> float | None:
    p = run / "val.jsonl"
    scores = [json.loads(x).get("score") for x in p.read_text().splitlines()] if p.exists() else []
    scores = [s for s in scores if s is not None]
    return max(scores) if scores else None


def train_stage0(d: Path, data: dict, hosts_dl: Path, seed: int, steps: int, log: list, placement: str) -> Path:
    context = ["--unlabeled", hosts_dl] if placement == "host" else []
    return train_seg(d / f"stage0{run_tag('stage0', placement, 'stage0')}_n{steps}", data["trainval"],
                     stage0_recipe(placement), seed, context, steps, log, placement)


def arm_model(arm: str, d: Path, data: dict, hosts_dl: Path, seed: int, steps: int, synth_steps: int,
              log: list, placement: str = "random", judge: str = "stage0") -> Path:
    """Train (or reuse) one arm of one (K, seed); the generator arm trains its Stage 1 first, with the
    ``judge`` arm's model (``stage0`` or ``none``, trained first) as frozen segmentor and QC judge."""
    stage0 = train_stage0(d, data, hosts_dl, seed, steps, log, placement)
    if arm == "stage0":
        return stage0
    extra = ["--unlabeled", hosts_dl]
    if arm == "generator" and judge == "none":
        stage0 = arm_model("none", d, data, hosts_dl, seed, steps, synth_steps, log, placement)
    if arm == "copy_paste":
        extra += ["--synthesis", "copy_paste"]
    elif arm == "procedural":
        # rendering lesions costs more than the step: two data-loader workers render in parallel (the
        # patches are those of the main process: step-indexed data), so the worker count is not in the signature
        extra += ["--synthesis", "profile", "--profile", data["profile"], "--set", f"data.num_workers={RENDER_WORKERS}"]
    elif arm == "generator":
        gen = train_synth(d / f"stage1{run_tag('stage1', placement, judge)}_n{synth_steps}", data["labelled"],
                          hosts_dl, stage0, seed, synth_steps, log, placement)
        extra += ["--synthesis", "generator", "--generator", gen, "--qc-segmentor", stage0]
    return train_seg(d / f"{arm}{run_tag(arm, placement, judge)}_n{steps}", data["trainval"], HOST_RECIPE, seed,
                     extra, steps, log, placement)


def run_facts(run_dir: Path) -> dict:
    """What a run saw: its labelled share, synthesis outcomes per patch and acceptance, best validation."""
    final = json.loads((run_dir / "final.json").read_text()) if (run_dir / "final.json").exists() else {}
    tally: dict = {}
    failed: dict = {}  # checks failed by rejected tries (logged from the lesions/ release on)
    tries = 0
    p = run_dir / "metrics.jsonl"
    if p.exists():
        for ln in p.read_text().splitlines():
            row = json.loads(ln)
            for k, v in (row.get("synth") or {}).items():
                tally[k] = tally.get(k, 0) + v
            tries += int(row.get("synth_tries") or 0)
            for k, v in (row.get("synth_rejects") or {}).items():
                failed[k] = failed.get(k, 0) + v
    drawn = tally.get("accepted", 0) + tally.get("rejected", 0)
    return {"labelled_share": final.get("labelled_share"), "steps": final.get("steps"),
            "best_val": best_val(run_dir), "synth_status": tally, "synth_tries": tries,
            **({"failed_checks": failed} if failed else {}),
            "accepted_per_try": round(tally.get("accepted", 0) / tries, 4) if tries else None,
            "accepted_per_patch_drawn": round(tally.get("accepted", 0) / drawn, 4) if drawn else None}
