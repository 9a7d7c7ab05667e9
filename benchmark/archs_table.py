"""``bench archs``: the registry as a table, each architecture sized as the named preset builds it.

Sizes are those of a ``bench run --preset P`` model: the architecture's ``preset_kwargs`` for
that preset applied (the cpu unet3d is narrower than the paper's), cost counted at the preset's
patch. Latency is timed only with ``--latency`` (it dominates the command's time). Only the
table goes to stdout; anything a library prints while models are built goes to stderr.
"""
from __future__ import annotations

import contextlib
import fnmatch
import sys


def registry_rows(preset: str = "cpu", measure: bool = True, pattern: str = "*", latency: bool = False,
                  latency_repeats: int = 3):
    import torch

    from architectures import ARCHITECTURES, create_architecture
    from .config import build_config
    from .cost import count_macs, count_parameters, measure_latency
    base = build_config(preset)
    shape = (1, 1, *base.data.patch_zyx)
    aliases: dict[str, list[str]] = {}
    for alias, target in ARCHITECTURES.aliases().items():
        aliases.setdefault(target, []).append(alias)
    rows = []
    for name in ARCHITECTURES.names():
        if not fnmatch.fnmatch(name, pattern):
            continue
        e = ARCHITECTURES.entry(name)
        row = {"name": name, "aliases": ",".join(sorted(aliases.get(name, []))), "family": e.family, "paper": e.paper}
        if measure:
            cfg = build_config(preset, **{"model.arch": name})  # the run's own model kwargs
            torch.manual_seed(0)
            with contextlib.redirect_stdout(sys.stderr):
                model = create_architecture(name, in_channels=1, out_channels=1, spatial_size=cfg.data.patch_zyx,
                                            **cfg.model.kwargs).eval()
                row["params_M"] = count_parameters(model) / 1e6
                row["GMACs"] = count_macs(model, shape) / 1e9
                if latency:
                    row["cpu_ms"] = measure_latency(model, shape, repeats=latency_repeats, warmup=1,
                                                    device="cpu")["median_ms"]
        rows.append(row)
    return base, rows


def format_table(rows: list[dict]) -> list[str]:
    cols = [("name", "name", "<", None), ("aliases", "aliases", "<", None), ("family", "family", "<", None),
            ("params_M", "params(M)", ">", "{:.3f}"), ("GMACs", "GMACs", ">", "{:.3f}"),
            ("cpu_ms", "CPU ms", ">", "{:.1f}"), ("paper", "paper", "<", None)]
    cols = [c for c in cols if any(c[0] in r for r in rows) or c[0] in ("name", "aliases", "family", "paper")]
    cells = [[(fmt.format(r[k]) if fmt else str(r[k])) if k in r else "" for k, _, _, fmt in cols] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _, _) in enumerate(cols)]

    def line(values):
        parts = [f"{v:{a}{w}}" for v, (_, _, a, _), w in zip(values, cols, widths)]
        return "  ".join(parts).rstrip()
    return [line([h for _, h, _, _ in cols])] + [line(c) for c in cells]


def print_table(args):
    preset = args.preset or "cpu"
    cfg, rows = registry_rows(preset, measure=not args.no_cost, pattern=args.filter, latency=args.latency)
    if not args.no_cost:
        import torch
        z, y, x = cfg.data.patch_zyx
        what = "parameters and MACs" + (f", CPU latency ({torch.get_num_threads()} threads)" if args.latency else "")
        print(f"{what} of each architecture as preset {preset} builds it, per {x}x{y}x{z} patch, batch 1",
              file=sys.stderr)
    for line in format_table(rows):
        print(line)
