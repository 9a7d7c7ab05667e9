"""MACs of a searched (or randomly drawn) network at a preset, beside a reference network's.

A search's result is worth its row only with its cost beside its parent's and the U-Net's at
the same preset and patch (``benchmark/run/cost.py``, fused inputs included)."""
from __future__ import annotations


def macs_at_preset(preset: str, arch: str, **kwargs) -> int:
    """MACs per patch of ``arch`` as ``bench run --preset PRESET`` builds it, with ``kwargs``
    (e.g. a genotype or topology) over its preset kwargs."""
    from benchmark.run.config import build_config
    from benchmark.run.cost import count_macs
    from benchmark.run.train import build_model
    cfg = build_config(preset, [], **{"model.arch": arch})
    cfg.model.kwargs = {**cfg.model.kwargs, **kwargs}
    return int(count_macs(build_model(cfg).eval(), (1, 1, *cfg.data.patch_zyx)))
