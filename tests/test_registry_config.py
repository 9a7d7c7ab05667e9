"""Registries and typed config: names, aliases, close-match errors, presets, overrides."""
import pytest

from benchmark.run.config import PRESETS, build_config, default_preset
from benchmark.core.errors import UsageError


def test_architecture_registry_lists_and_builds():
    from architectures import create_architecture, list_architectures
    names = list_architectures()
    assert "unet3d" in names
    assert names == sorted(names)
    net = create_architecture("unet3d", spatial_size=(8, 16, 16), base_channels=4)
    assert sum(p.numel() for p in net.parameters()) > 0


def test_unknown_architecture_names_close_matches():
    from architectures import create_architecture
    with pytest.raises(UsageError) as e:
        create_architecture("unet3")
    assert "did you mean unet3d" in str(e.value)


@pytest.mark.slow
def test_registration_does_not_depend_on_imports():
    import subprocess, sys
    # a fresh interpreter that imports only the factory sees every family
    out = subprocess.run([sys.executable, "-c", "from architectures import list_architectures as l; "
                          "from benchmark.losses import list_losses as m; print(len(l()), len(m()))"],
                         capture_output=True, text=True, check=True).stdout.split()
    from architectures import list_architectures
    from benchmark.losses import list_losses
    assert int(out[0]) == len(list_architectures()) and int(out[1]) == len(list_losses())


def test_duplicate_registration_rejected():
    from benchmark.core.registry import Registry
    r = Registry("thing")
    r.register("a")(lambda: 1)
    with pytest.raises(ValueError):
        r.register("a")(lambda: 2)


def test_loss_registry():
    from benchmark.losses import create_loss, list_losses
    assert {"dice", "bce", "dice_bce"} <= set(list_losses())
    with pytest.raises(UsageError, match="did you mean"):
        create_loss("dice_bc")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_share_field_of_view(preset):
    cfg = build_config(preset)
    s = cfg.data.spacing_mm
    assert [round(c * s) for c in cfg.data.crop_xyz] == [80, 80, 40]
    assert [round(p * s) for p in cfg.data.patch_xyz] == [64, 64, 32]
    assert cfg.data.patch_zyx == tuple(reversed(cfg.data.patch_xyz))


def test_overrides_and_validation():
    cfg = build_config("smoke", ["train.epochs=3", "optim.lr=3e-4", "model.kwargs.base_channels=8", "optim.optimizer=sgd"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 3e-4 and cfg.model.kwargs == {"base_channels": 8}
    assert cfg.optim.optimizer == "sgd"
    for bad, msg in [("train.epochs=0", "train.epochs"), ("optim.optimizer=lbfgs", "optim.optimizer"),
                     ("nosuch.x=1", "unknown section"), ("train.nosuch=1", "train.nosuch"), ("epochs", "key=value"),
                     ("optim.lr=-1", "optim.lr")]:
        with pytest.raises(UsageError, match=msg):
            build_config("smoke", [bad])
    with pytest.raises(UsageError, match="unknown preset"):
        build_config("gpu")


def test_default_preset_says_why(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_preset() == ("paper", "CUDA is available")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_preset() == ("cpu", "no CUDA device")
    # and a config built without a preset takes that one
    assert build_config(None).preset == "cpu"


def test_fingerprint_ignores_name_only():
    a, b = build_config("smoke"), build_config("smoke")
    b.name = "other"
    assert a.fingerprint() == b.fingerprint()
    assert build_config("smoke", ["train.seed=1"]).fingerprint() != a.fingerprint()


def test_budget_fingerprint_ignores_only_the_patience():
    from benchmark.run.config import build_config
    a = build_config("cpu", ["train.early_stopping_patience=6"])
    b = build_config("cpu", ["train.early_stopping_patience=20"])
    c = build_config("cpu", ["train.early_stopping_patience=6", "train.epochs=21"])
    assert a.fingerprint() != b.fingerprint() and a.budget_fingerprint() == b.budget_fingerprint()
    assert a.budget_fingerprint() != c.budget_fingerprint()
    # the cpu budget is short: every architecture gets all of it
    assert b.train.early_stopping_patience >= b.train.epochs == build_config("cpu").train.epochs
