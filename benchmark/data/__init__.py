"""The dataset layer: nodule index, fixed split, ground truth, crops and their cache.

Entry point for the engine: :func:`benchmark.data.store.load_crops`. What is dataset-specific
sits behind an adapter (:mod:`benchmark.data.adapter`), looked up by ``data.dataset`` in
:mod:`benchmark.data.datasets`; LIDC-IDRI's is :mod:`benchmark.data.lidc`. For LIDC, everything
that touches pylidc goes through :mod:`benchmark.data.pylidc_adapter`; both image sources (the
embedded phantom and real DICOM) feed the same resampling code in :mod:`benchmark.data.geometry`.
See ``datasets/lidc/CARD.md`` for the data choices and ``/work/shared/notes/lidc.md`` style
notes in the card for the quirks.
"""
from __future__ import annotations

__all__ = ["load_crops", "CropStore"]


def __getattr__(name):
    # Lazy so that ``import benchmark.data`` stays cheap (no pylidc / SimpleITK import).
    if name in __all__:
        from benchmark.data import store
        return getattr(store, name)
    raise AttributeError(name)
