"""The up-front checks of the trainers, without PyTorch: the synthesis options of Stage 2 and every
case of the datalists. ``train-seg`` and ``train-synth`` run them before the trainers (and PyTorch,
MONAI) load, so a bad option or a bad case is one line at once; the trainers run them again when
called without their result (``checked=``)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from ..config import Config
from ..data import datalist_entries
from ..errors import ConfigError
from ..labels import get_label_map
from ..lesions.profile import load_profile
from ..organs import get_organ
from ..synthesis import SYNTHESIS_MODES, SynthesisOptions

# What Stage 2 reads of a SynthesisOptions; its other synthesis settings are the config's (synth.online_prob,
# synth.online_max_tries, qc.*, the organ's size classes), so a SynthesisOptions that sets any other field is refused.
STAGE2_OPTION_FIELDS = ("organ", "label_map", "generator", "qc_segmentor", "qc_device", "profile", "exclude_calcified")


def check_synthesis(synthesis: str, options: SynthesisOptions | None = None, cfg: Config | None = None) -> None:
    """Refuse an unknown ``synthesis`` mode, or ``options`` that do not go with it (or with ``cfg``).

    ``options`` is the :class:`~freetumor.synthesis.SynthesisOptions` of ``synthesize``; Stage 2 reads the
    fields of :data:`STAGE2_OPTION_FIELDS` and refuses any other field set to a value other than its default.

    Example:
        >>> check_synthesis("profile", SynthesisOptions("lung", profile="builtin:lung", exclude_calcified=True))
        >>> check_synthesis("procedural", SynthesisOptions("liver", size="small"))
        Traceback (most recent call last):
        ...
        freetumor.errors.ConfigError: Stage 2 (train-seg --synthesis) does not read SynthesisOptions.size: its tumours follow the config (synth.*, qc.*) and the organ's size classes
    """
    if synthesis not in SYNTHESIS_MODES:
        raise ConfigError(f"unknown synthesis {synthesis!r}; choose one of {', '.join(SYNTHESIS_MODES)}")
    if options is None:
        options = SynthesisOptions(cfg.organ if cfg is not None else "liver")  # nothing set: nothing to refuse
    generator, qc_segmentor, profile = options.generator, options.qc_segmentor, options.profile
    default = SynthesisOptions(options.organ)
    for f in dataclasses.fields(options):
        if f.name not in STAGE2_OPTION_FIELDS and getattr(options, f.name) != getattr(default, f.name):
            raise ConfigError(f"Stage 2 (train-seg --synthesis) does not read SynthesisOptions.{f.name}: its tumours "
                              "follow the config (synth.*, qc.*) and the organ's size classes")
    if cfg is not None:
        if get_organ(options.organ).name != cfg.organ:
            raise ConfigError(f"the synthesis options are for {options.organ!r}, the training config for {cfg.organ!r}")
        if options.label_map is not None and str(options.label_map) != str(cfg.label_map):
            raise ConfigError(f"the synthesis options' label map {str(options.label_map)!r} is not the training "
                              f"config's {cfg.label_map!r}; Stage 2 reads labels with the config's")
    if synthesis == "generator" and generator is None:
        raise ConfigError("--synthesis generator needs --generator RUNDIR/generator.pt")
    if synthesis == "profile" and profile is None:
        raise ConfigError("--synthesis profile needs --profile PROFILE.json (or builtin:lung)")
    if profile is not None and synthesis != "profile":
        raise ConfigError("--profile needs --synthesis profile")
    if options.exclude_calcified and profile is None:
        raise ConfigError("--exclude-calcified leaves out a lesion profile's calcified lesions: "
                          "give the profile too (--synthesis profile --profile)")
    if synthesis == "none" and (generator is not None or qc_segmentor is not None):
        raise ConfigError("--generator and --qc-segmentor need --synthesis procedural or generator")
    if synthesis == "copy_paste" and generator is not None:
        raise ConfigError("--generator needs --synthesis generator")


def checked_pool(cfg: Config, datalist, unlabelled, skip_bad: bool = False,
                 log: Callable[[str], None] | None = None) -> tuple[list[dict], list[dict]]:
    """(labelled entries, unlabelled entries) of the datalists, every case checked first
    (:func:`~freetumor.data.check_cases`): bad ones stop the run before anything is written, or
    are left out with ``skip_bad`` and counted through ``log`` (once per datalist)."""
    lm = get_label_map(cfg.label_map, cfg.organ)
    entries = datalist_entries(datalist, label_map=lm, skip_bad=skip_bad, log=log)
    extra = [] if unlabelled is None else datalist_entries(
        unlabelled, "unlabelled cases with organ masks", label_map=lm, skip_bad=skip_bad, log=log)
    return entries, extra


def checked_synthesis_inputs(cfg: Config, labelled, unlabelled, profile=None, realism_real=None,
                             skip_bad: bool = False, log: Callable[[str], None] | None = None):
    """What Stage 1 (:func:`~freetumor.training.stage1.train_synthesis`) checks before anything is written:
    ``(cfg, profile, labelled entries, unlabelled entries)``. The lesion ``profile`` is loaded (one-line
    errors: wrong organ, bad file) and sets ``synth.lesions``; the held-aside ``realism_real`` datalist
    and every case of ``labelled`` (repeated ``data.labelled_repeat`` times) and ``unlabelled`` are
    checked (bad cases left out with ``skip_bad``, counted through ``log``)."""
    prof = None
    if profile is not None:
        prof = load_profile(profile, cfg.organ)
        cfg = cfg.replace(**{"synth.lesions": "profile"})
    elif cfg.synth.lesions == "profile":
        raise ConfigError("synth.lesions is profile: give the lesion profile (--profile)")
    if realism_real is not None:
        datalist_entries(realism_real, "held-aside real lesions")
    lab, unl = checked_pool(cfg, labelled, unlabelled or None, skip_bad, log)
    return cfg, prof, lab * cfg.data.labelled_repeat, unl
