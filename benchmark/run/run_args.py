"""Turning command-line arguments into a :class:`~benchmark.run.config.RunConfig`.

Shared by every command that trains (``bench run``, ``bench baseline``, ``bench tune``), so the
commands' modules import it instead of importing each other (``cli`` registers ``tune``; ``tune``
must not import ``cli`` back).
"""
from __future__ import annotations

import argparse
import sys


def add_config_arguments(p: argparse.ArgumentParser, arch_required: bool = False):
    p.add_argument("--arch", required=arch_required, help="registered architecture (see `bench archs`)")
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
    cfg = build_config(preset, args.overrides, base=base, **top)
    validate_names(cfg)
    return cfg


def validate_names(cfg):
    """The loss name resolved to its canonical name; the architecture's was resolved when the
    config was built (``benchmark.run.config.build_config``)."""
    from benchmark.losses import loss_entry
    cfg.loss.name = loss_entry(cfg.loss.name).name
