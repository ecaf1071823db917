"""The ``freetumor`` command line (Typer). Thin: each command calls library functions.

Exit codes: 0 success; 1 bad input or a domain error (one line on stderr,
``error: <file>: <problem>``, no traceback); 2 usage error (unknown option,
bad choice), as Click reports it.
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
import typer.core

from .errors import CaseErrors, FreeTumorError
from .labels import PRESET_NAMES
from .organs import ORGAN_NAMES, SHAPE_CONVENTIONS, SIZE_CHOICES
from .tasks import TASKS


class _Group(typer.core.TyperGroup):
    """A command group whose listing shows each command's whole first paragraph, wrapped to the
    terminal, where Click would cut it off with '...'."""

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or (cmd.help or "").split("\n\n")[0]
            rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _version(value: bool) -> None:
    """Typer callback of ``--version``: print the package version and exit 0."""
    if value:
        from . import __version__  # deferred: only for --version

        typer.echo(f"freetumor {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=_Group,
    name="freetumor",
    help="Generative tumour synthesis in CT (FreeTumor): synthetic tumours in healthy organs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(cls=_Group, help="Datalists: check cases, index public datasets, merge pools.", no_args_is_help=True)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Generative tumour synthesis in CT (FreeTumor): synthetic tumours in healthy organs."""


app.add_typer(data_app, name="data")
turing_app = typer.Typer(cls=_Group, help="Visual Turing Test: a blinded reader study of real vs synthetic tumours.",
                         no_args_is_help=True)
readers_app = typer.Typer(cls=_Group, help="Reader tokens of a study.", no_args_is_help=True)
turing_app.add_typer(readers_app, name="readers")
app.add_typer(turing_app, name="turing")
lesions_app = typer.Typer(cls=_Group, help="Real lesions: measure them into a lesion profile that synthesis draws from.",
                          no_args_is_help=True)
app.add_typer(lesions_app, name="lesions")

# Choices as Enums: Typer shows them in --help and rejects others with a usage error (exit 2).
Organ = Enum("Organ", {n: n for n in ORGAN_NAMES}, type=str)
Size = Enum("Size", {n: n for n in SIZE_CHOICES}, type=str)
ShapeConvention = Enum("ShapeConvention", {n: n for n in SHAPE_CONVENTIONS}, type=str)
SHAPE_CONVENTION_HELP = ("physical: sizes, deformation and blur isotropic in mm (chest classes fitted to real "
                         "nodules); released: the released code's target voxels per axis (chest lesions 4x longer "
                         "head-foot), for replication only.")
Region = Enum("Region", {n: n for n in ("abdomen", "chest")}, type=str)
Context = Enum("Context", {n: n for n in ("bbox", "patch")}, type=str)
QCContext = Enum("QCContext", {n: n for n in ("bbox", "fit", "patch")}, type=str)
SynthesisMode = Enum("SynthesisMode", {n: n for n in ("none", "procedural", "generator", "profile", "copy_paste")},
                     type=str)
LABEL_MAP_HELP = f"Label convention: {', '.join(PRESET_NAMES)} or a JSON file (default: abdomen7 / chest3 by organ)."


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def domain_errors(func):
    """Turn :class:`FreeTumorError` into one line on stderr (one per bad case for
    :class:`CaseErrors`) and exit code 1; an operating-system error on a file (permission
    denied, disk full, a file where a folder should be) is reported the same way."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CaseErrors as exc:
            for line in exc.lines[:-1]:
                typer.echo(f"error: {line}", err=True)
            _fail(exc.lines[-1])
        except FreeTumorError as exc:
            _fail(str(exc))
        except OSError as exc:
            if exc.filename is None:
                raise
            _fail(f"{exc.filename}: {exc.strerror or type(exc).__name__}")
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written")

    return wrapper


def _checked(check, value):
    """Run a Typer callback's check: its result, or one line and exit 1."""
    try:
        return check(value)
    except FreeTumorError as exc:
        _fail(str(exc))


def _seed(value: int) -> int:
    """Typer callback: a seed every generator takes, else one line and exit 1."""
    from .config import check_seed  # deferred: config loads YAML; --help stays light

    return _checked(check_seed, value)


def _out_folder(path: Path) -> Path:
    """Typer callback: an output folder that can be made and written, else one line and exit 1."""
    from .io import check_output_folder  # deferred: io loads nibabel; --help stays light

    _checked(check_output_folder, path)
    return path


def _out_file(path: Path) -> Path:
    """Typer callback: an output file whose folder can be made and written, else one line and exit 1."""
    from .io import check_output_file  # deferred: as above

    _checked(check_output_file, path)
    return path


def _checkpoint(path: Optional[Path]) -> Optional[Path]:
    """Typer callback: a checkpoint option (``--model``, ``--generator``, ...) that names a file
    which could be a checkpoint, checked before PyTorch loads; else one line and exit 1."""
    from .config import check_checkpoint_file  # deferred: as above

    if path is not None:
        _checked(check_checkpoint_file, path)
    return path


QUIET_HELP = "No progress on stderr (phase lines, heartbeats, progress bars); results still print."


def _quiet() -> bool:
    """The ``--quiet`` option of every command that can run for more than a few seconds."""
    return typer.Option(False, "--quiet", "-q", help=QUIET_HELP)


PROFILE_HELP = ("Lesion profile (profile.json of `freetumor lesions fit`, or builtin:lung, fitted to LIDC nodules; "
                "builtin:liver, IRCAD tumours with literature sizes; builtin:pancreas|kidney, literature-based): each "
                "lesion's size, shape, contrast, edge and texture are drawn from it and rendered in mm and HU.")
EXCLUDE_CALCIFIED_HELP = ("With --profile: leave out the profile's calcified lesions (contrast above 1200 HU; "
                         "8.5 % of builtin:lung's LIDC-IDRI nodules), which are labelled as tumour there.")
SKIP_BAD_HELP = ("Leave out cases that fail the up-front check (as `freetumor data check`) and say how many; "
                 "by default one bad case stops the command before any work.")


@app.command()
@domain_errors
def synthesize(
    image: Path = typer.Option(..., "--image", help="CT: a NIfTI file or a DICOM series folder."),
    label: Path = typer.Option(..., "--label", help="Label map (NIfTI) on the CT's grid with the organ."),
    organ: Organ = typer.Option(..., "--organ", help="Tumour type / host organ."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP),
    count: int = typer.Option(1, "--count", min=1, help="Number of tumours to add."),
    size: Size = typer.Option(Size.mix, "--size", help="Size class; mix draws per tumour."),
    seed: int = typer.Option(0, "--seed", callback=_seed, help="Random seed (recorded in the output)."),
    png: bool = typer.Option(True, "--png/--no-png", help="Write the before/after figure."),
    generator: Optional[Path] = typer.Option(None, "--generator", callback=_checkpoint, help="Stage-1 generator (RUNDIR/generator.pt): "
                                             "learned difference maps instead of the rule-based scalar."),
    qc_segmentor: Optional[Path] = typer.Option(None, "--qc-segmentor", callback=_checkpoint, help="Segmentation checkpoint for "
                                                "quality control (keep a tumour the segmentor finds)."),
    qc_threshold: Optional[float] = typer.Option(None, "--qc-threshold",
                                                 help="QC: minimum segmentor recall of the tumour (default 0.7)."),
    max_tries: int = typer.Option(10, "--max-tries", min=1, help="QC: tumours drawn per lesion before giving up."),
    context: Optional[Context] = typer.Option(None, "--context", help="Generator input: the lesion box plus a "
                                              "margin (bbox) or the whole training patch (patch, as the paper)."),
    qc_context: Optional[QCContext] = typer.Option(None, "--qc-context", help="QC segmentor input: the training "
                                                   "patch around the lesion (patch, as the paper), the lesion box "
                                                   "plus qc.margin rounded up to the network's input multiple (fit) "
                                                   "or zero-padded (bbox); default qc.context."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda for the generator and QC segmentor."),
    qc_device: Optional[str] = typer.Option(None, "--qc-device", help="cpu, cuda or cuda:N for the QC segmentor "
                                            "alone (default: --device)."),
    profile: Optional[str] = typer.Option(None, "--profile", help=PROFILE_HELP),
    shape_convention: ShapeConvention = typer.Option(ShapeConvention.physical, "--shape-convention",
                                                     help=SHAPE_CONVENTION_HELP),
    exclude_calcified: bool = typer.Option(False, "--exclude-calcified", help=EXCLUDE_CALCIFIED_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace this case's outputs from an earlier run "
                                   "in --out (and remove its old figure with --no-png)."),
    quiet: bool = _quiet(),
) -> None:
    """Put synthetic tumours into one organ of a CT.

    Writes DIR/<case>_image.nii.gz, DIR/<case>_label.nii.gz, DIR/<case>.json
    (one record per lesion, with QC scores and tries) and DIR/<case>.png, where <case> is the
    image's file name; refuses if DIR already holds them, unless --overwrite is given.
    """
    # deferred: the synthesis stack (NumPy, SciPy, nibabel) loads only for this command
    from .io import case_name  # deferred: as above
    from .synthesis import SynthesisOptions, build_synthesizer, check_case_outputs, synthesize_case  # deferred: as above

    # refuse an earlier run's outputs before any network is loaded
    check_case_outputs(out, case_name(image), (image, label), overwrite)

    options = SynthesisOptions(
        organ.value, label_map=label_map, size=size.value, count=count, generator=generator,
        qc_segmentor=qc_segmentor, qc_threshold=qc_threshold, qc_max_tries=max_tries,
        context=context.value if context else None, qc_context=qc_context.value if qc_context else None, device=device, png=png,
        qc_device=qc_device,
        profile=profile,
        shape_convention=shape_convention.value,
        exclude_calcified=exclude_calcified,
    )
    from .progress import Progress  # deferred: as above

    with Progress(not quiet) as progress:
        if generator is not None or qc_segmentor is not None:
            progress("loading " + " and ".join(n for n, p in (("the generator", generator),
                                                               ("the QC segmentor", qc_segmentor)) if p))
        synthesizer = build_synthesizer(options)
        record = synthesize_case(synthesizer, image, label, out, seed=seed, count=options.count,
                                 png=options.png, overwrite=overwrite, progress=progress)
    for r in record["lesions"]:
        qc = r.get("qc")
        tail = "" if qc is None else (f"  QC recall {qc['recall']:.2f}" if qc.get("recall") is not None else "  QC") + \
            f" accepted after {r['qc_tries']} tr{'y' if r['qc_tries'] == 1 else 'ies'}"
        typer.echo(
            f"lesion {r['index']}: {r['size_class']:<6} {r['volume_ml']:8.2f} mL  "
            f"centre {r['centre_mm']} mm  HU {r['mean_hu_before']:.0f} -> {r['mean_hu_after']:.0f}{tail}"
        )
    for key, name in record["outputs"].items():
        typer.echo(f"wrote {key}: {Path(out) / name}")


@app.command()
@domain_errors
def phantom(
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder for the cohort."),
    cases: int = typer.Option(4, "--cases", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", callback=_seed, help="Random seed."),
    region: Region = typer.Option(Region.abdomen, "--region", help="Body region."),
    tumour_fraction: float = typer.Option(0.5, "--tumour-fraction", min=0.0, max=1.0,
                                          help="Share of cases with a tumour."),
    tumour_radius_mm: Optional[tuple[float, float]] = typer.Option(
        None, "--tumour-radius-mm", help="MIN MAX tumour radius in mm (e.g. 3 9 for early tumours)."),
) -> None:
    """Write a procedural CT phantom cohort (NIfTI + datalist.json, labelled.json, unlabelled.json)."""
    from .phantom import write_cohort  # deferred: loaded when the command runs, so that --help and light commands start fast

    datalist = write_cohort(out, cases, seed=seed, region=region.value, tumour_fraction=tumour_fraction,
                            tumour_radius_mm=tumour_radius_mm)
    typer.echo(f"wrote {cases} {region.value} phantom cases; datalist: {datalist} "
               f"(pools: {datalist.parent / 'labelled.json'}, {datalist.parent / 'unlabelled.json'})")


@data_app.command("check")
@domain_errors
def data_check(
    datalist: Path = typer.Argument(..., help="MSD-style datalist JSON."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP),
) -> None:
    """Validate every case of a datalist; exit 1 if any case fails."""
    from rich.console import Console  # deferred: loaded when the command runs
    from rich.table import Table  # deferred: loaded when the command runs

    from .data import check_datalist  # deferred: loaded when the command runs, so that --help and light commands start fast
    from .io import case_name  # deferred: as above

    results = check_datalist(datalist, label_map)
    table = Table(title=f"{datalist}", show_lines=False)
    for col in ("case", "shape", "spacing (mm)", "HU range", "labels", "status"):
        table.add_column(col)
    for r in results:
        table.add_row(
            case_name(r.image),
            "x".join(map(str, r.shape)) if r.shape else "-",
            "x".join(f"{s:.3g}" for s in r.spacing) if r.spacing else "-",
            f"{r.hu_range[0]:.0f}..{r.hu_range[1]:.0f}" if r.hu_range else "-",
            ",".join(map(str, r.labels)) if r.labels is not None else "-",
            "ok" if r.ok else "FAIL: " + "; ".join(r.problems),
        )
    Console(width=200).print(table)
    bad = [r for r in results if not r.ok]
    typer.echo(f"{len(results) - len(bad)} ok, {len(bad)} failed")
    if bad:
        for r in bad:
            typer.echo(f"error: {'; '.join(r.problems)}", err=True)
        raise typer.Exit(code=1)


@data_app.command("index")
@domain_errors
def data_index(
    root: Path = typer.Argument(..., help="Root folder of your copy of the dataset (e.g. Task03_Liver)."),
    source: str = typer.Option(..., "--source", help="Catalogued source, e.g. msd-task03-liver, kits23, "
                               "totalsegmentator (see freetumor.data.catalog)."),
    out: Path = typer.Option(..., "--out", callback=_out_file, help="Datalist JSON to write; converted labels go to <stem>_labels/."),
    workers: int = typer.Option(1, "--workers", min=1, help="Cases processed in parallel."),
) -> None:
    """Index a public dataset by its catalogued layout: labels converted to abdomen7/chest3, cases checked."""
    from .data.catalog import index_source  # deferred: loaded when the command runs, so that --help and light commands start fast

    dl = index_source(root, source, out, workers=workers,
                      log=lambda line: typer.echo(f"problem: {line}", err=True))
    c = dl["counts"]
    organs = ", ".join(f"{o} {n}" for o, n in c["organs"].items())
    typer.echo(f"{dl['source']}: {c['found']} cases found; {c['labelled']} labelled ({c['tumour']} with tumours, "
               f"{c['healthy']} without), {c['unlabelled']} unlabelled, {c['problems']} problems; "
               f"organs: {organs}; label map {dl['label_map']}")
    typer.echo(f"wrote {out}")


@data_app.command("merge")
@domain_errors
def data_merge(
    datalists: list[Path] = typer.Argument(..., help="Datalists to pool (e.g. from `freetumor data index`)."),
    labelled: Path = typer.Option(..., "--labelled", callback=_out_file, help="Output: cases with tumour labels."),
    unlabelled: Path = typer.Option(..., "--unlabelled", callback=_out_file, help="Output: healthy cases with organ masks."),
) -> None:
    """Pool datalists into the labelled and unlabelled pools of train-synth (one label convention)."""
    from rich.console import Console  # deferred: loaded when the command runs
    from rich.table import Table  # deferred: loaded when the command runs

    from .data.catalog import merge_datalists  # deferred: loaded when the command runs, so that --help and light commands start fast

    r = merge_datalists(datalists, labelled, unlabelled)
    c = r["counts"]
    console = Console(width=200)
    t = Table(title=f"sources ({r['label_map']})")
    for col in ("source", "labelled", "unlabelled", "skipped"):
        t.add_column(col, justify="left" if col == "source" else "right")
    for name, row in c["sources"].items():
        t.add_row(name, str(row["labelled"]), str(row["unlabelled"]), str(row["skipped"]))
    t.add_row("total", str(c["labelled"]), str(c["unlabelled"]),
              str(sum(row["skipped"] for row in c["sources"].values())))
    console.print(t)
    t = Table(title="organs (labelled: with a tumour of it; unlabelled: with its mask)")
    for col in ("organ", "labelled", "unlabelled"):
        t.add_column(col, justify="left" if col == "organ" else "right")
    for name, row in c["organs"].items():
        t.add_row(name, str(row["labelled"]), str(row["unlabelled"]))
    console.print(t)
    if c["duplicates"]:
        typer.echo(f"{c['duplicates']} duplicate cases (same image) kept once")
    typer.echo(f"wrote {labelled} ({c['labelled']} cases) and {unlabelled} ({c['unlabelled']} cases)")


@app.command()
@domain_errors
def demo(
    out: Path = typer.Option(Path("freetumor-demo"), "--out", callback=_out_folder, help="Output folder."),
    seed: int = typer.Option(0, "--seed", callback=_seed, help="Random seed."),
    train_steps: int = typer.Option(200, "--train-steps", min=0, help="Baseline training steps (0: skip training)."),
    synth_steps: int = typer.Option(60, "--synth-steps", min=0,
                                    help="Stage-1 generator iterations after the baseline (0: skip)."),
    stage2_steps: Optional[int] = typer.Option(None, "--stage2-steps", min=0, help="Stage-2 training steps "
                                               "(default: --train-steps; 0: skip Stage 2 and the comparison)."),
    stage2_synthesis: str = typer.Option("procedural", "--stage2-synthesis", help="Stage-2 online synthesis: "
                                         "generator (the Stage-1 generator), procedural, or profile "
                                         "(builtin:liver)."),
    quiet: bool = _quiet(),
) -> None:
    """Phantoms -> synthetic tumours -> reader study -> baseline -> Stage 1 -> Stage 2 vs baseline -> an HTML page."""
    from .demo import run_demo  # deferred: loaded when the command runs, so that --help and light commands start fast

    page = run_demo(out, seed=seed, train_steps=train_steps, synth_steps=synth_steps, stage2_steps=stage2_steps,
                    stage2_synthesis=stage2_synthesis, log=typer.echo, progress=not quiet)
    typer.echo(f"open {page}")


@app.command("train-seg")
@domain_errors
def train_seg(
    config: str = typer.Option(..., "--config", help="YAML file or preset name (e.g. liver-cpu-tiny)."),
    datalist: Path = typer.Option(..., "--datalist", help="MSD-style datalist with labelled \"training\" cases."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Run folder."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Validation fold K of train.folds (default 0)."),
    folds: Optional[int] = typer.Option(None, "--folds", help="k-fold cross-validation: train every fold K of N "
                                        "in OUT/fold_K, score each on its validation cases, write OUT/folds.json."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimiser steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint "
                                "(with --folds: each fold from its own)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set train.lr=1e-4 (repeatable)."),
    synthesis: SynthesisMode = typer.Option(SynthesisMode.none, "--synthesis", help="Online tumour synthesis on "
                                            "eligible patches (Stage 2); none is the baseline; copy_paste pastes the "
                                            "run's real labelled lesions (TumorCP-style baseline)."),
    generator: Optional[Path] = typer.Option(None, "--generator", callback=_checkpoint, help="Stage-1 generator.pt (--synthesis generator)."),
    qc_segmentor: Optional[Path] = typer.Option(None, "--qc-segmentor", callback=_checkpoint, help="Frozen segmentor for quality control "
                                                "of the synthetic tumours."),
    qc_device: Optional[str] = typer.Option(None, "--qc-device", help="cpu, cuda or cuda:N for the QC segmentor "
                                            "(sets qc.device; default: the training device)."),
    unlabeled: Optional[Path] = typer.Option(None, "--unlabeled", help="Unlabelled datalist (CT + organ masks) "
                                             "added to the training pool."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Lesion profile (--synthesis profile): lesions "
                                          "drawn from real ones and rendered in HU on each patch."),
    exclude_calcified: bool = typer.Option(False, "--exclude-calcified", help=EXCLUDE_CALCIFIED_HELP),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
    quiet: bool = _quiet(),
) -> None:
    """Train a segmentation model: the Stage-0 baseline, or Stage 2 with online synthesis; torchrun for several
    GPUs; --folds N: k-fold cross-validation, every fold scored on its own validation cases."""
    from .config import load_config  # deferred: loaded when the command runs, so that --help and light commands start fast

    if folds is not None:
        if fold is not None:
            _fail("--fold K trains one fold, --folds N trains all N; give one of them")
        if folds < 2:
            _fail(f"--folds must be at least 2, got {folds}")
        fixed = [o for o in overrides if o.split("=", 1)[0].strip() in ("train.fold", "train.folds")]
        if fixed:
            _fail(f"--folds sets train.folds and trains every train.fold; drop --set {fixed[0]}")
    extra = list(overrides)
    if fold is not None:
        extra.append(f"train.fold={fold}")
    if max_steps is not None:
        extra.append(f"train.max_steps={max_steps}")
    if qc_device is not None:
        extra.append(f"qc.device={qc_device}")
    cfg = load_config(config, extra)
    from .synthesis import SynthesisOptions  # deferred: as above
    from .training.checks import check_synthesis, checked_pool  # deferred: as above (no PyTorch)

    # the options of `synthesize` that Stage 2 reads (the rest of its synthesis settings are the config's)
    options = SynthesisOptions(cfg.organ, generator=generator, qc_segmentor=qc_segmentor, qc_device=qc_device,
                               profile=profile, exclude_calcified=exclude_calcified)
    check_synthesis(synthesis.value, options, cfg)
    # every case checked before PyTorch loads, so a bad option or case fails at once (--folds checks its own)
    checked = None if folds is not None else checked_pool(cfg, datalist, unlabeled, skip_bad_cases, typer.echo)
    from .training.stage0 import train_segmentation  # deferred: PyTorch loads after the config and cases are checked

    if folds is not None:
        from .training.kfold import format_folds_table, train_kfold  # deferred: as above

        result = train_kfold(cfg, datalist, out, folds, resume=resume, log=typer.echo, unlabelled=unlabeled,
                             synthesis=synthesis.value, options=options, skip_bad_cases=skip_bad_cases,
                             progress=not quiet)
        typer.echo(format_folds_table(result))
        typer.echo(f"done: {folds} folds; per-case and per-fold metrics in {out / 'folds.json'}")
        return
    summary = train_segmentation(cfg, datalist, out, resume=resume, log=typer.echo, unlabelled=unlabeled,
                                 synthesis=synthesis.value, options=options, skip_bad_cases=skip_bad_cases,
                                 progress=not quiet, checked=checked)
    typer.echo(f"done: {summary['steps']} steps, best score {summary['best_score']:.4f}; checkpoints in {out}")


@app.command("synthesize-batch")
@domain_errors
def synthesize_batch_cmd(
    datalist: Path = typer.Option(..., "--datalist", help="Unlabelled datalist: CT with organ masks."),
    organ: Organ = typer.Option(..., "--organ", help="Tumour type / host organ."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder (cases/, done/, errors.log, datalist.json)."),
    per_case: int = typer.Option(1, "--per-case", min=1, help="Synthetic variants per input case."),
    count: int = typer.Option(1, "--count", min=1, help="Tumours per synthetic case."),
    size: Size = typer.Option(Size.mix, "--size", help="Size class; mix draws per tumour."),
    seed: int = typer.Option(0, "--seed", callback=_seed, help="Random seed (each case's seed derives from it)."),
    generator: Optional[Path] = typer.Option(None, "--generator", callback=_checkpoint, help="Stage-1 generator.pt."),
    qc_segmentor: Optional[Path] = typer.Option(None, "--qc-segmentor", callback=_checkpoint, help="Segmentor for quality control."),
    qc_threshold: Optional[float] = typer.Option(None, "--qc-threshold", help="QC recall."),
    qc_device: Optional[str] = typer.Option(None, "--qc-device", help="cpu, cuda or cuda:N for the QC segmentor."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Ray actors (default: all CPUs, or "
                                          "one per GPU); 0 runs serially without Ray."),
    ray_address: str = typer.Option("local", "--ray-address", help="local (a Ray instance on this machine), "
                                    "auto or a cluster address."),
    profile: Optional[str] = typer.Option(None, "--profile", help=PROFILE_HELP),
    shape_convention: ShapeConvention = typer.Option(ShapeConvention.physical, "--shape-convention",
                                                     help=SHAPE_CONVENTION_HELP),
    exclude_calcified: bool = typer.Option(False, "--exclude-calcified", help=EXCLUDE_CALCIFIED_HELP),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
    quiet: bool = _quiet(),
) -> None:
    """Synthesise tumours for a whole cohort on Ray; resumable, one error line per failed case."""
    # deferred: the batch and synthesis stack loads only for this command
    from .batch import synthesize_batch
    from .synthesis import SynthesisOptions  # deferred: as above

    options = SynthesisOptions(organ.value, label_map=label_map, size=size.value, count=count, generator=generator,
                               qc_segmentor=qc_segmentor, qc_threshold=qc_threshold, png=False, profile=profile,
                               qc_device=qc_device, exclude_calcified=exclude_calcified,
                               shape_convention=shape_convention.value)
    s = synthesize_batch(datalist, options, out, per_case=per_case, seed=seed, workers=workers,
                         ray_address=ray_address, log=typer.echo, skip_bad_cases=skip_bad_cases,
                         progress=not quiet)
    rate = "" if s["cases_per_s"] is None else f", {s['cases_per_s']:.2f} cases/s"
    typer.echo(f"{s['done']} of {s['tasks']} synthetic cases done ({s['ran']} this run, {s['errors']} failed"
               f"{rate}, {s['engine']}); datalist: {Path(out) / 'datalist.json'}")
    if s["errors"]:
        typer.echo(f"error: {s['errors']} case(s) failed; see {Path(out) / 'errors.log'} (rerun to retry them)",
                   err=True)
        raise typer.Exit(code=1)


@lesions_app.command("fit")
@domain_errors
def lesions_fit(
    datalist: Path = typer.Option(..., "--datalist", help="Labelled datalist of real lesions (image + label)."),
    organ: Organ = typer.Option(..., "--organ", help="Tumour type the lesions are."),
    out: Path = typer.Option(..., "--out", callback=_out_file, help="The profile JSON to write (e.g. profile.json)."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP + " A map may name the tumour "
                                            "id alone (lesion-only data such as nodule crops)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name recorded in the profile."),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
    quiet: bool = _quiet(),
) -> None:
    """Measure every real lesion of a datalist and write its lesion profile (for synthesize --profile)."""
    from .lesions.fit import fit_datalist  # deferred: loaded when the command runs

    from .progress import Progress  # deferred: as above

    with Progress(not quiet) as progress:
        p = fit_datalist(datalist, organ.value, out, label_map=label_map, name=name, skip_bad_cases=skip_bad_cases,
                         log=typer.echo, progress=progress)
    s = p.summary
    typer.echo(f"{len(p.rows)} {p.organ} lesions from {p.source['cases']} case(s): diameter median "
               f"{s['diameter_mm']['median']:.1f} mm (5-95%: {s['diameter_mm']['p5']:.1f}-{s['diameter_mm']['p95']:.1f}), "
               f"contrast median {s['contrast_hu']['median']:+.0f} HU, edge {s['edge_norm']['median']:.3f}/mm x contrast; "
               f"wrote {out}")


@app.command("train-synth")
@domain_errors
def train_synth(
    config: str = typer.Option(..., "--config", help="YAML file or preset name (e.g. liver-cpu-tiny)."),
    datalist: Path = typer.Option(..., "--datalist", help="Labelled datalist (real tumours)."),
    unlabeled: Optional[Path] = typer.Option(None, "--unlabeled", help="Unlabelled datalist: CT with organ masks "
                                             "only (label = organ mask)."),
    segmentor: Path = typer.Option(..., "--segmentor", callback=_checkpoint, help="Frozen Stage-0 segmentor, e.g. RUNDIR/best.pt."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Run folder."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N iterations (G + D step)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set synth.lr=2e-4."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Lesion profile (profile.json of `freetumor lesions "
                                          "fit` or builtin:<name>): fake lesions are its renders and the generator "
                                          "learns a bounded residual on them (zero at step 0)."),
    realism_real: Optional[Path] = typer.Option(None, "--realism-real", help="Datalist of held-aside real lesions: "
                                                "each epoch logs the realism AUC of the probe lesions against them "
                                                "and best_realism.pt keeps the most realistic generator."),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
    quiet: bool = _quiet(),
) -> None:
    """Stage 1: train the difference-map generator against a discriminator and the frozen segmentor."""
    from .config import load_config  # deferred: loaded when the command runs, so that --help and light commands start fast

    extra = list(overrides)
    if max_steps is not None:
        extra.append(f"synth.max_steps={max_steps}")
    cfg = load_config(config, extra)
    from .training.checks import checked_synthesis_inputs  # deferred: as above (no PyTorch)

    # the profile and every case checked before PyTorch loads, so a bad one fails at once
    checked = checked_synthesis_inputs(cfg, datalist, unlabeled, profile, realism_real, skip_bad_cases, typer.echo)
    from .training.stage1 import train_synthesis  # deferred: PyTorch loads after the config and cases are checked
    summary = train_synthesis(cfg, datalist, unlabeled, segmentor, out, resume=resume, log=typer.echo,
                              profile=profile, realism_real=realism_real, skip_bad_cases=skip_bad_cases,
                              progress=not quiet, checked=checked)
    r0, r1 = summary.get("probe_recall_start"), summary.get("probe_recall_end")
    if r0 is not None and r1 is not None:
        typer.echo(f"segmentor recall of fake tumours (probe patches): {r0:.3f} at step 0 -> {r1:.3f}")
    best = summary.get("best_realism")
    if best:
        typer.echo(f"most realistic: epoch {best['epoch']} (step {best['step']}), realism AUC {best['realism_auc']:.3f}: "
                   f"{Path(out) / 'best_realism.pt'}")
    typer.echo(f"done: {summary['steps']} steps; generator: {Path(out) / 'generator.pt'}")


@app.command()
@domain_errors
def predict(
    model: Path = typer.Option(..., "--model", callback=_checkpoint, help="Checkpoint, e.g. RUNDIR/best.pt."),
    image: Path = typer.Option(..., "--image", help="CT file, DICOM series folder, or folder of NIfTI files."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder (<case>.nii.gz, on each input's grid)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write <case>_prob.nii.gz: the tumour "
                                       "probability on the input grid (for FROC)"),
    quiet: bool = _quiet(),
) -> None:
    """Sliding-window segmentation, written back on each input's native grid."""
    from .inference import predict_files  # deferred: loaded when the command runs, so that --help and light commands start fast

    written = predict_files(model, image, out, device=device, skip_bad_cases=skip_bad_cases,
                            probabilities=probabilities, progress=not quiet)
    extra = " and tumour probability map(s)" if probabilities else ""
    typer.echo(f"wrote {len(written)} prediction(s){extra} to {out}")


@app.command()
@domain_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Folder of predictions <case>.nii.gz (as `predict` writes)."),
    gt: Path = typer.Option(..., "--gt", help="Ground truth: a folder of label maps named by case, or a datalist."),
    organ: Organ = typer.Option(..., "--organ", help="Tumour type evaluated."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Report folder (metrics.csv, lesions.csv, summary.json, index.html)."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP),
    pred_label_map: str = typer.Option("auto", "--pred-label-map", help="Predictions' convention: organ3 "
                                       "(1 organ, 2 tumour), a label map, or auto."),
    nsd_tolerance_mm: float = typer.Option(2.0, "--nsd-tolerance-mm", min=0.0, help="NSD tolerance in mm."),
    quiet: bool = _quiet(),
) -> None:
    """Dice, NSD and lesion-wise detection (early tumours < 20 mm, patient level) of predictions."""
    from .evaluation.evaluate import evaluate_predictions  # deferred: loaded when the command runs, so that --help and light commands start fast

    s = evaluate_predictions(pred, gt, organ.value, out, label_map=label_map, pred_label_map=pred_label_map,
                             tolerance_mm=nsd_tolerance_mm, progress=not quiet)
    m, d = s["metrics"], s["detection"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    typer.echo(f"{s['cases']} cases: tumour Dice {f(m['tumour_dice']['mean'])} (n={m['tumour_dice']['n']}), "
               f"tumour NSD {f(m['tumour_nsd']['mean'])}, organ Dice {f(m['organ_dice']['mean'])}")
    typer.echo(f"lesion sensitivity {f(d['lesion_sensitivity']['value'])} "
               f"({d['lesion_sensitivity']['k']}/{d['lesion_sensitivity']['n']}), early (< 20 mm) "
               f"{f(d['early_sensitivity']['value'])} ({d['early_sensitivity']['k']}/{d['early_sensitivity']['n']}), "
               f"false positives per scan {f(d['false_positives_per_scan']['value'])}")
    typer.echo(f"report: {out / 'index.html'}")


@app.command("froc")
@domain_errors
def froc_cmd(
    prob: Path = typer.Option(..., "--prob", help="Folder of <case>_prob.nii.gz tumour probability maps "
                              "(as `predict --probabilities` writes them)."),
    gt: Path = typer.Option(..., "--gt", help="Ground truth: a folder of label maps named by case, or a datalist."),
    organ: Organ = typer.Option(..., "--organ", help="Tumour type: its tumour label gives the lesions."),
    out: Path = typer.Option(..., "--out", callback=_out_file, help="Report JSON to write (FROC curve, sensitivity "
                             "at 1/2/4/8 false positives per scan, CPM, per-lesion and per-candidate rows)."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP),
    region: Optional[Path] = typer.Option(None, "--region", help="Folder of region masks <case>.nii.gz (any "
                                          "non-zero voxel, on the ground truth's grid, e.g. lungs): false "
                                          "positives count only when they overlap the region."),
    threshold: float = typer.Option(0.1, "--threshold", help="Candidates: connected components of "
                                    "probability >= this (0 < threshold <= 1)."),
    min_size_mm3: float = typer.Option(0.0, "--min-size-mm3", help="Drop candidates smaller than this "
                                       "volume (mm^3; 0 keeps all)."),
    quiet: bool = _quiet(),
) -> None:
    """Lesion-level FROC of tumour probability maps: sensitivity vs false positives per scan, and CPM."""
    from .evaluation.froc import froc_folders  # deferred: loaded when the command runs, so that --help and light commands start fast

    r = froc_folders(prob, gt, organ.value, out, label_map=label_map, region=region, threshold=threshold,
                     min_size_mm3=min_size_mm3, progress=not quiet)

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    at = ", ".join(f"{f(v)} @ {k}" for k, v in r["sensitivity_at"].items())
    small = f"; < {r['settings']['small_mm']:g} mm ({r['small_lesions']} lesions): CPM {f(r['cpm_small'])}"
    typer.echo(f"{r['lesions']} lesions in {r['scans']} scans: sensitivity {at} FP/scan; CPM {f(r['cpm'])}"
               f"{small}; report: {out}")


@app.command()
@domain_errors
def compare(
    report_a: Path = typer.Argument(..., help="Evaluation report folder of method A (e.g. the baseline)."),
    report_b: Path = typer.Argument(..., help="Evaluation report folder of method B."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder (compare.json, compare.csv, boxplot.png, index.html)."),
) -> None:
    """Paired t / Wilcoxon tests, bootstrap CIs and box plots of B vs A on their common cases."""
    from .evaluation.compare import compare_reports  # deferred: loaded when the command runs, so that --help and light commands start fast

    r = compare_reports(report_a, report_b, out)
    for k, v in r["metrics"].items():
        if v.get("mean_diff") is None:
            continue
        t = (v.get("t_test") or {}).get("p")
        w = (v.get("wilcoxon") or {}).get("p")
        typer.echo(f"{k:<12} {r['a']['name']} {v['mean_a']:.3f}  {r['b']['name']} {v['mean_b']:.3f}  "
                   f"diff {v['mean_diff']:+.3f}  t-test p {'n/a' if t is None else f'{t:.3g}'}  "
                   f"Wilcoxon p {'n/a' if w is None else f'{w:.3g}'}  (n={v['n']})")
    if "lesion_detection" in r:
        d = r["lesion_detection"]
        typer.echo(f"lesions detected: {d['detected_a']} vs {d['detected_b']} of {d['lesions']} "
                   f"(McNemar p {d['mcnemar_exact_p']:.3g})")
    typer.echo(f"report: {out / 'index.html'}")


@app.command()
@domain_errors
def realism(
    real: Path = typer.Option(..., "--real", help="Datalist of real CT with tumour labels."),
    synthetic: Path = typer.Option(..., "--synthetic", help="Folder written by `freetumor synthesize`, or a "
                                   "datalist (.json) whose labelled lesions are the set to score."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder (realism.json, features.csv, realism.png, "
                             "lesions.png)."),
    organ: Organ = typer.Option(Organ.liver, "--organ", help="Tumour type."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP),
    control: Optional[Path] = typer.Option(None, "--control", help="A second datalist of real lesions: also "
                                           "score --real against it, the real-vs-real floor of the AUC."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds of the classifier."),
    seed: int = typer.Option(0, "--seed", callback=_seed, help="Random seed."),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
    reader: str = typer.Option("radiomics", "--reader", help="radiomics (features + logistic regression), or cnn: "
                               "also a small 3D CNN on the crops, case-wise folds (>= 20 lesions per side)."),
    quiet: bool = _quiet(),
) -> None:
    """Machine Visual Turing Test: real-vs-synthetic classifier AUC (0.5 = indistinguishable), feature distances."""
    from .evaluation.realism import run_realism  # deferred: scikit-learn, scipy and matplotlib load only for this command

    from .progress import Progress  # deferred: as above

    with Progress(not quiet) as progress:
        r = run_realism(real, synthetic, out, organ.value, label_map=label_map, folds=folds, seed=seed,
                        control=control, skip_bad_cases=skip_bad_cases, log=typer.echo, progress=progress,
                        reader=reader)
    sm = r["summary"]
    lo, hi = sm["auc_ci95"]
    floor = ""
    if "control_auc" in sm:
        c_lo, c_hi = sm["control_auc_ci95"]
        floor = f"; real-vs-control (real-vs-real floor) AUC {sm['control_auc']:.3f} (95% CI {c_lo:.3f}-{c_hi:.3f})"
    typer.echo(f"real-vs-synthetic classifier AUC {sm['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}; 0.5 = indistinguishable)"
               f"{floor}, mean |d| over features {sm['mean_abs_d']:.3f}; report: {out / 'realism.json'}")
    if "cnn_auc" in sm:
        c = f"; its real-vs-control AUC {sm['cnn_control_auc']:.3f}" if "cnn_control_auc" in sm else ""
        typer.echo(f"CNN reader AUC {sm['cnn_auc']:.3f} (95% CI {sm['cnn_auc_ci95'][0]:.3f}-{sm['cnn_auc_ci95'][1]:.3f}){c}")


@turing_app.command("build")
@domain_errors
def turing_build(
    real: Path = typer.Option(..., "--real", help="Datalist of real CT with tumour labels."),
    synthetic: Path = typer.Option(..., "--synthetic", help="Folder written by `freetumor synthesize`."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Study folder."),
    per_type: Optional[int] = typer.Option(None, "--per-type", min=1, help="Real and synthetic cases per tumour "
                                           "type (default: as many as the smaller side has)."),
    seed: int = typer.Option(0, "--seed", callback=_seed, help="Random seed for the case selection and order."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
) -> None:
    """Build a balanced, shuffled, blinded study; the answer key goes to STUDYDIR/key.json."""
    from .turing.build import build_study  # deferred: loaded when the command runs, so that --help and light commands start fast

    s = build_study(real, synthetic, out, per_type=per_type, seed=seed, label_map=label_map, log=typer.echo,
                    skip_bad_cases=skip_bad_cases)
    per = ", ".join(f"{k}: {v} real + {v} synthetic" for k, v in s["per_type"].items())
    typer.echo(f"study with {s['cases']} cases ({per}) in {out}")
    typer.echo(f"next: freetumor turing readers add NAME --study {out}; freetumor turing serve {out}")


@readers_app.command("add")
@domain_errors
def turing_readers_add(
    name: str = typer.Argument(..., help="Reader name (unique in the study)."),
    study: Path = typer.Option(Path("."), "--study", help="Study folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Host of the server, for the printed link."),
    port: int = typer.Option(8000, "--port", help="Port of the server, for the printed link."),
) -> None:
    """Create a reader and print their personal link (the token is shown only once)."""
    from .turing import db  # deferred: loaded when the command runs, so that --help and light commands start fast
    from .turing.score import load_key  # deferred: loaded when the command runs, so that --help and light commands start fast

    load_key(study)  # a study folder
    token = db.add_reader(study, name)
    typer.echo(f"reader {name!r}: http://{host}:{port}/r/{token}")


@turing_app.command("serve")
@domain_errors
def turing_serve(
    study: Path = typer.Argument(..., help="Study folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (localhost by default)."),
    port: int = typer.Option(8000, "--port", help="Port."),
) -> None:
    """Serve the reader web app (answers are stored in STUDYDIR/readers.sqlite)."""
    from .turing.server import serve  # deferred: loaded when the command runs, so that --help and light commands start fast

    serve(study, host=host, port=port, log=typer.echo)


@turing_app.command("score")
@domain_errors
def turing_score(
    study: Path = typer.Argument(..., help="Study folder."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder (score.json, score.csv, passed.csv, score.png)."),
) -> None:
    """Sensitivity, specificity and accuracy per reader and pooled (95% CIs); synthetic cases that passed."""
    from .turing.score import score_study  # deferred: loaded when the command runs, so that --help and light commands start fast

    r = score_study(study, out)

    def f(p):
        return "n/a" if p["value"] is None else f"{p['value']:.3f} ({p['k']}/{p['n']})"

    for name, m in [*r["readers"].items(), ("pooled", r["pooled"])]:
        typer.echo(f"{name:<16} sensitivity {f(m['sensitivity'])}  specificity {f(m['specificity'])}  "
                   f"accuracy {f(m['accuracy'])}")
    typer.echo(f"synthetic cases that passed as real: {len(r['passed'])}; report: {out}")


ExportTask = Enum("ExportTask", {n: n for n in TASKS}, type=str)
OrganEngine = Enum("OrganEngine", {n: n for n in ("freetumor", "threshold", "totalsegmentator", "lungmask")}, type=str)


@app.command("export-nnunet")
@domain_errors
def export_nnunet_cmd(
    datalist: Path = typer.Option(..., "--datalist", help="MSD-style datalist; entries with a label are exported."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Dataset folder nnUNet_raw/DatasetNNN_Name (3-digit id)."),
    organ: Optional[Organ] = typer.Option(None, "--organ", help="Tumour type (task organ3: organ 1, tumour 2)."),
    task: Optional[ExportTask] = typer.Option(None, "--task", help="Training classes (default: organ3 with "
                                              "--organ, else abdomen7 / chest3 by label map)."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help=LABEL_MAP_HELP),
    copy: bool = typer.Option(True, "--copy/--symlink", help="Copy .nii.gz images, or symlink them."),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
) -> None:
    """Write an nnU-Net v2 raw dataset: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, dataset.json."""
    from .export import export_nnunet  # deferred: loaded when the command runs, so that --help and light commands start fast

    r = export_nnunet(datalist, out, task=task.value if task else None, organ=organ.value if organ else None,
                      label_map=label_map, copy=copy, skip_bad_cases=skip_bad_cases)
    labels = ", ".join(f"{v} {k}" for k, v in r["labels"].items())
    typer.echo(f"wrote {r['numTraining']} case(s) to {out} (task {r['task']}: {labels}); "
               f"skipped {r['skipped_unlabelled']} unlabelled")


@app.command("organs")
@domain_errors
def organs_cmd(
    image: Path = typer.Option(..., "--image", help="CT file, DICOM series folder, or folder of NIfTI files."),
    out: Path = typer.Option(..., "--out", callback=_out_folder, help="Output folder (<case>_organs.nii.gz organ masks, "
                             "datalist.json)."),
    engine: OrganEngine = typer.Option(OrganEngine.freetumor, "--engine", help="freetumor (a --model checkpoint), "
                                       "threshold (chest CT: model-free lung masks), or the optional "
                                       "totalsegmentator / lungmask packages."),
    model: Optional[Path] = typer.Option(None, "--model", help="Segmentor checkpoint (engine freetumor)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    skip_bad_cases: bool = typer.Option(False, "--skip-bad-cases", help=SKIP_BAD_HELP),
    quiet: bool = _quiet(),
) -> None:
    """Organ masks (no tumour labels) of unlabelled CT, with a datalist for --unlabeled; tumour predictions
    are merged into their organ."""
    from .organ_masks import segment_organs  # deferred: loaded when the command runs, so that --help and light commands start fast

    written = segment_organs(image, out, engine=engine.value, model=model, device=device, progress=not quiet,
                             skip_bad_cases=skip_bad_cases)
    typer.echo(f"wrote {len(written)} organ mask(s) and {Path(out) / 'datalist.json'}")


OUTPUT_OPTIONS = ("--out", "--labelled", "--unlabelled")  # every option that names what a command writes


def empty_output(argv: list[str]) -> str | None:
    """The output option given an empty value (``--out ''`` or ``--out=``), else ``None``: Typer turns
    ``''`` into ``Path('.')``, the current folder, before any callback sees it.

    >>> empty_output(["synthesize", "--out", ""]), empty_output(["x", "--out=", "y"]), empty_output(["--out", "o"])
    ('--out', '--out', None)
    """
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in OUTPUT_OPTIONS and (value == "" if eq else i + 1 < len(argv) and argv[i + 1] == ""):
            return name
    return None


def main() -> None:  # console-script entry point
    bad = empty_output(sys.argv[1:])
    if bad:
        typer.echo(f"error: {bad}: empty output path", err=True)
        sys.exit(1)
    try:
        app()
    except BrokenPipeError:  # e.g. `freetumor ... | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
