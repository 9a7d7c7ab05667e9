"""The architecture registry (timm-style), with lazy registration.

    from architectures import create_architecture, list_architectures
    net = create_architecture("transfuse", in_channels=1, out_channels=1, spatial_size=(32, 64, 64))

Every factory takes ``in_channels``, ``out_channels`` and ``spatial_size`` (the patch in
tensor order ``(z, y, x)``, i.e. ``(D, H, W)``) plus its own keyword arguments, and returns an
``nn.Module`` mapping ``(B, in_channels, D, H, W)`` to logits ``(B, out_channels, D, H, W)``.

Deep supervision contract: in ``train()`` mode a model may return a list of logit maps,
the first being the main full-resolution output (auxiliary maps may be coarser), and
exposes ``deep_supervision_weights`` (same length). In ``eval()`` mode it returns the main
tensor only. ``benchmark.losses.deep_supervision.DeepSupervisionLoss`` applies any loss to such outputs.

Each architecture family is one self-contained module with its paper cited at the top. The
families benchmarked so far are declared in the table below with their metadata (family,
paper, aliases, per-preset sizes); their module's ``@register_architecture(name,
search_space=...)`` only attaches the factory. Listing names or reading metadata therefore
imports none of them, and neither MONAI, timm nor segmentation-models: a module is imported the
first time one of its architectures is built (or its search space is asked for).

Adding an architecture is one module (and its test): a module of this folder that the table
does not name registers with its metadata in the decorator, e.g.
``@register_architecture("mynet", family="CNN", paper="...", search_space=my_space,
experimental=True)``; it is imported the first time names are listed or an unknown name is
looked up. ``experimental=True`` marks an architecture that no published protocol
(``protocols/*.yaml``, frozen once run) is expected to list yet.
"""
from __future__ import annotations

import fnmatch
import importlib
from pathlib import Path

from benchmark.core.registry import Registry


def _import_undeclared_modules() -> None:
    """Import this folder's modules that the table does not name: each registers itself."""
    declared = {d["module"] for d in _DECLARATIONS.values()}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if not path.stem.startswith("_") and path.stem not in declared:
            importlib.import_module(f"{__name__}.{path.stem}")


ARCHITECTURES = Registry("architecture", discover=_import_undeclared_modules)
register_architecture = ARCHITECTURES.register

_TRANSFUSE_PAPER = "Zhang et al. 2021, arXiv 2102.08005"
_TRANSFUSE_SMOKE = {"cnn_widths": [8, 16, 32], "embed_dim": 48, "vit_depth": 2, "num_heads": 4, "patch_size": 2}

#: The factories' own defaults of the tuned dropout-like knobs (TransFuse3D's drop_rate, drop_path)
_TRANSFUSE_DEFAULTS = {"drop_rate": 0.2, "drop_path": 0.0}

#: name -> where its factory lives and what it is. ``preset_kwargs``: the architecture's size
#: for the small presets (merged under the user's ``model.kwargs`` by ``benchmark.run.config``).
#: ``search_defaults``: the value the network is built with, when a config does not set it, of
#: each kwarg its ``search_space`` tunes that no preset sizes (the architecture's default recipe,
#: a protocol's ``tuning.first_trial: default_recipe``; ``search_space.default_recipe_params``).
_DECLARATIONS: dict[str, dict] = {
    "unet3d": dict(
        module="unet3d", family="CNN",
        paper="Çiçek et al. 2016, arXiv 1606.06650 (3DUNet-Pytorch, strided-conv downsampling)",
        preset_kwargs={"smoke": {"base_channels": 8}, "cpu": {"base_channels": 12}},
        search_defaults={"dropout": 0.0}),
    "transfuse_s": dict(
        module="transfuse", family="CNN+Transformer", paper=_TRANSFUSE_PAPER, aliases=("transfuse",),
        preset_kwargs={"smoke": _TRANSFUSE_SMOKE,
                       "cpu": {"cnn_widths": [16, 32, 64], "embed_dim": 96, "vit_depth": 4, "num_heads": 4,
                               "patch_size": 4}},
        search_defaults=_TRANSFUSE_DEFAULTS),
    "transfuse_l": dict(
        module="transfuse", family="CNN+Transformer", paper=_TRANSFUSE_PAPER,
        preset_kwargs={"smoke": _TRANSFUSE_SMOKE,
                       "cpu": {"cnn_widths": [24, 48, 96], "embed_dim": 192, "vit_depth": 6, "num_heads": 6,
                               "patch_size": 4}},
        search_defaults=_TRANSFUSE_DEFAULTS),
    "mctrans": dict(
        module="mctrans", family="CNN+Transformer", paper="Ji et al. 2021, arXiv 2106.14385",
        preset_kwargs={"smoke": {"widths": [8, 16, 32, 64, 128], "decoder_widths": [8, 16, 32, 48], "d_model": 48,
                                 "num_layers": 2},
                       "cpu": {"widths": [8, 16, 32, 64, 128], "decoder_widths": [8, 16, 32, 48], "d_model": 48}},
        search_defaults={"d_model": 96, "num_layers": 4, "dropout": 0.1}),
    "nnunet_plain": dict(
        module="nnunet", family="library",
        paper="Isensee et al. 2021, arXiv 1809.10486 (nnU-Net 3d_fullres, dynamic-network-architectures)",
        preset_kwargs={"smoke": {"base_features": 8}, "cpu": {"base_features": 12}}),
    "nnunet_resenc": dict(
        module="nnunet", family="library",
        paper="Isensee et al. 2024, arXiv 2404.09556 (nnU-Net ResEnc, dynamic-network-architectures)",
        preset_kwargs={"smoke": {"base_features": 8}, "cpu": {"base_features": 12}}),
    "smp_unet": dict(
        module="smp_unet", family="library",
        paper="Ronneberger et al. 2015, arXiv 1505.04597; ResNet encoder (segmentation-models-pytorch-3d)",
        preset_kwargs={"smoke": {"decoder_channels": [32, 16, 8, 8, 8]},
                       "cpu": {"decoder_channels": [64, 32, 16, 8, 8]}},
        search_defaults={"encoder_name": "resnet18"}),
    "swinunetr": dict(
        module="monai_transformers", family="library",
        paper="Hatamizadeh et al. 2022, arXiv 2201.01266 (MONAI SwinUNETR)",
        search_defaults={"feature_size": 12, "dropout_path_rate": 0.0}),
    "unetr": dict(
        module="monai_transformers", family="library",
        paper="Hatamizadeh et al. 2022, arXiv 2103.10504 (MONAI UNETR)",
        preset_kwargs={"smoke": {"hidden_size": 96, "mlp_dim": 384, "num_heads": 3, "feature_size": 8},
                       "cpu": {"hidden_size": 96, "mlp_dim": 384, "num_heads": 3, "feature_size": 12}},
        search_defaults={"dropout_rate": 0.0}),
    "dints": dict(
        module="dints", family="NAS",
        paper="He et al. 2021, arXiv 2103.15954 (MONAI DiNTS; genotype architectures/dints_genotype.json from "
              "`bench search dints`, else the fixed one)",
        genotype="dints_genotype.json", searched_by="bench search dints", parent="dints_fixed",
        preset_kwargs={"smoke": {"channel_mul": 0.25}, "cpu": {"channel_mul": 0.25}}),
    "dints_fixed": dict(
        module="dints", family="NAS",
        paper="He et al. 2021, arXiv 2103.15954 (MONAI DiNTS, fixed decoded topology, not searched on this data)",
        preset_kwargs={"smoke": {"channel_mul": 0.25}, "cpu": {"channel_mul": 0.25}}),
    "bionet": dict(
        module="bionet", family="NAS", paper="Xiang et al. 2020, arXiv 2007.00243 (BiO-Net, 3D port)",
        preset_kwargs={"smoke": {"base_channels": 8}, "cpu": {"base_channels": 8}},
        search_defaults={"iterations": 3, "integrate": False}),
    "bixnas": dict(
        module="bixnas", family="NAS",
        paper="Wang et al. 2021, arXiv 2106.14033 (BiX-NAS; genotype architectures/bixnas_genotype.json)",
        genotype="bixnas_genotype.json", searched_by="bench search bixnas", parent="bionet",
        preset_kwargs={"smoke": {"width": 16, "full_res_width": 8}, "cpu": {"width": 16, "full_res_width": 8}}),
}

for _name, _d in _DECLARATIONS.items():
    _d = dict(_d)
    ARCHITECTURES.declare(_name, f"{__name__}.{_d.pop('module')}", **_d)


def main_output(out):
    """The main full-resolution logits of a model's output (the first map under deep
    supervision, see the contract above)."""
    return out[0] if isinstance(out, (list, tuple)) else out


def create_architecture(name: str, **kwargs):
    """Build a registered architecture by name (or alias); imports its module on first use."""
    return ARCHITECTURES.create(name, **kwargs)


def list_architectures(pattern: str = "*", include_aliases: bool = False) -> list[str]:
    return [n for n in ARCHITECTURES.names(include_aliases) if fnmatch.fnmatch(n, pattern)]


def architecture_entry(name: str):
    """Metadata of a name or alias; ``.factory`` / ``.search_space`` import its module."""
    return ARCHITECTURES.entry(name)


def preset_kwargs(name: str, preset: str) -> dict:
    """The architecture's own size for ``preset`` (its declared ``preset_kwargs``; {} if none):
    what a config merges under the user's kwargs and what a protocol holding sizes fixes."""
    return dict(architecture_entry(name).meta.get("preset_kwargs", {}).get(preset, {}))


def searched_parents() -> dict[str, str]:
    """{searched architecture: its parent}, from the metadata ``parent``: the hand-designed network
    whose design space the search explored (BiX-NAS prunes BiO-Net's skips; the DiNTS search
    replaces the fixed decoded topology). A search earns its row by matching or beating its parent
    at lower cost; the leaderboard sets the two side by side."""
    return {n: architecture_entry(n).meta["parent"] for n in list_architectures()
            if "parent" in architecture_entry(n).meta}


def searched_genotype_problem(name: str, preset: str) -> str | None:
    """Why architecture ``name`` cannot yet stand for a search at ``preset`` (None: it can, or it
    is not searched). A searched network (metadata ``genotype`` and ``searched_by``) is only the
    searched network once its genotype file exists and records a finished search (its
    ``budget_seconds``) on that preset; until then it silently builds a placeholder (DiNTS: the
    fixed topology; BiX-NAS: an older genotype), so a protocol must not tune or train it. The
    smoke preset, which only tests the machinery, accepts any genotype."""
    import json
    from pathlib import Path
    meta = architecture_entry(name).meta
    if "genotype" not in meta or preset == "smoke":
        return None
    path = Path(__file__).parent / meta["genotype"]
    how = f"run `{meta['searched_by']} --preset {preset}` and commit {path.name}"
    try:
        recorded = json.loads(path.read_text()).get("meta", {})
    except FileNotFoundError:
        return f"architectures/{path.name} does not exist: {how}"
    except (OSError, ValueError) as e:
        return f"architectures/{path.name} is unreadable ({e}): {how}"
    if recorded.get("preset") != preset or "budget_seconds" not in recorded:
        return (f"architectures/{path.name} is not from a recorded {preset} search "
                f"(preset {recorded.get('preset')!r}, budget_seconds {'recorded' if 'budget_seconds' in recorded else 'missing'}): {how}")
    return None


def is_experimental(name: str) -> bool:
    """Whether the architecture is declared experimental (no published protocol need list it)."""
    return bool(architecture_entry(name).meta.get("experimental", False))


def architecture_modules() -> list[str]:
    """Every module the table names (tests import them all to check the table)."""
    entries = (ARCHITECTURES.entry(n) for n in ARCHITECTURES.names())
    return sorted({e.module for e in entries if e.module is not None})
