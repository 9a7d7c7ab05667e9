"""``bench archs``: the registry as a table, with cost measured at the active preset's patch."""
from __future__ import annotations

import fnmatch
import sys

import torch


def registry_rows(preset: str = "cpu", measure: bool = True, pattern: str = "*", latency_repeats: int = 3):
    from architectures import ARCHITECTURES, create_architecture
    from .config import build_config
    from .cost import count_macs, count_parameters, measure_latency
    cfg = build_config(preset)
    shape = (1, 1, *cfg.data.patch_zyx)
    aliases = {}
    for alias, target in ARCHITECTURES.aliases().items():
        aliases.setdefault(target, []).append(alias)
    rows = []
    for name in ARCHITECTURES.names():
        if not fnmatch.fnmatch(name, pattern):
            continue
        e = ARCHITECTURES.entry(name)
        row = {"name": name, "aliases": ",".join(sorted(aliases.get(name, []))), "family": e.family, "paper": e.paper}
        if measure:
            torch.manual_seed(0)
            model = create_architecture(name, in_channels=1, out_channels=1, spatial_size=cfg.data.patch_zyx).eval()
            row["params_M"] = count_parameters(model) / 1e6
            row["GMACs"] = count_macs(model, shape) / 1e9
            row["cpu_ms"] = measure_latency(model, shape, repeats=latency_repeats, warmup=1, device="cpu")["median_ms"]
        rows.append(row)
    return cfg, rows


def print_table(args):
    preset = args.preset or "cpu"
    cfg, rows = registry_rows(preset, measure=not args.no_cost, pattern=args.filter)
    z, y, x = cfg.data.patch_zyx
    if not args.no_cost:
        print(f"cost per {x}x{y}x{z} patch (preset {preset}), batch 1, CPU ({torch.get_num_threads()} threads)",
              file=sys.stderr)
    head = f"{'name':16s} {'aliases':12s} {'family':16s}"
    if not args.no_cost:
        head += f" {'params(M)':>9s} {'GMACs':>8s} {'CPU ms':>8s}"
    print(head + "  paper")
    for r in rows:
        line = f"{r['name']:16s} {r['aliases']:12s} {r['family']:16s}"
        if "params_M" in r:
            line += f" {r['params_M']:9.2f} {r['GMACs']:8.3f} {r['cpu_ms']:8.1f}"
        print(line + f"  {r['paper']}")
