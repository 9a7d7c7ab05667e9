"""Turning command-line arguments into a :class:`~benchmark.run.config.RunConfig`.

Shared by every command that trains (``bench run``, ``bench baseline``, ``bench tune``), so the
commands' modules import it instead of importing each other (``cli`` registers ``tune``; ``tune``
must not import ``cli`` back).
"""
from __future__ import annotations

import argparse
import sys


def add_config_arguments(p: argparse.ArgumentParser, arch_required: bool = False):
    p.add_argument("--arch", required=arch_required,
                   help=f"registered architecture (see `bench archs`); {alias_summary()}")
    p.add_argument("--loss", help="registered loss (see `bench losses`)")
    p.add_argument("--preset", help="smoke | cpu | paper (default: paper with CUDA, else cpu)")
    p.add_argument("--config", help="YAML config file (e.g. a run's logged config.yaml)")
    p.add_argument("--seed", type=int, help="training seed")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config field, e.g. train.epochs=5")


def resolve_config(args, announce: bool = True):
    from benchmark.run.config import build_config, default_preset, load_config_file
    base = load_config_file(args.config) if getattr(args, "config", None) else None
    preset = args.preset
    if preset is None and not (base and base.get("preset")):
        preset, why = default_preset()
        if announce:
            print(f"preset: {preset} ({why}); choose with --preset", file=sys.stderr)
    top = {"model.arch": getattr(args, "arch", None), "loss.name": getattr(args, "loss", None),
           "train.seed": getattr(args, "seed", None)}
    cfg = build_config(preset, args.overrides, base=base, **top)     # resolves an alias
    validate_names(cfg)
    requested = top["model.arch"] or (base or {}).get("model", {}).get("arch")
    if announce and alias_tags(requested):
        print(alias_note(requested), file=sys.stderr)
    return cfg


# An alias (`transfuse`) names a family but runs one member of it (TransFuse-S), while results are
# reported per member (the README's headline compares TransFuse-L): every place that accepts an
# alias says which member it resolved to, in the output (``alias_note``), the run's tags
# (``alias_tags``) and the help texts (``alias_summary``, `bench archs`).
ALIAS_TAG = "arch.requested"


def _variants(name: str) -> list[str]:
    """The registered architectures built by the same module as ``name`` (a family's members)."""
    from architectures import ARCHITECTURES, architecture_entry
    module = architecture_entry(name).module
    return [n for n in ARCHITECTURES.names() if architecture_entry(n).module == module]


def alias_note(requested: str) -> str:
    """One line: which architecture the alias ``requested`` runs, and its family's other members."""
    from architectures import architecture_entry
    name = architecture_entry(requested).name
    others = [v for v in _variants(name) if v != name]
    return (f"note: --arch {requested} is an alias: running {name}"
            + (f" (not {', '.join(others)}; name the variant to choose)" if others else ""))


def alias_tags(requested) -> dict[str, str]:
    """The run's record of an alias it was started with (none when it was named directly)."""
    from architectures import ARCHITECTURES
    return {ALIAS_TAG: requested} if requested in ARCHITECTURES.aliases() else {}


def alias_summary() -> str:
    """The aliases for help texts, e.g. "alias transfuse = transfuse_s"."""
    from architectures import ARCHITECTURES
    pairs = sorted(ARCHITECTURES.aliases().items())
    return "aliases: " + ", ".join(f"{a} = {t}" for a, t in pairs) if pairs else "no aliases"


def validate_names(cfg):
    """The loss name resolved to its canonical name; the architecture's was resolved when the
    config was built (``benchmark.run.config.build_config``)."""
    from benchmark.losses import loss_entry
    cfg.loss.name = loss_entry(cfg.loss.name).name
