"""Using a trained model and the registry commands: lazy registration, `bench archs`/`losses`,
MLflow models and tags, the quiet console, `bench ui` process handling."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


# ------------------------------------------------------------------ lazy registration
def test_importing_the_registry_imports_no_model_library():
    code = ("import sys, architectures as a; names = a.list_architectures(); "
            "meta = [a.architecture_entry(n).paper for n in names]; "
            "print(len(names), sorted(m for m in ('monai', 'timm', 'segmentation_models_pytorch_3d', "
            "'dynamic_network_architectures') if m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('architectures.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "12 [] []", out


@pytest.mark.slow  # imports every model library (MONAI, timm, ...)
def test_every_declared_entry_is_what_its_module_registers():
    import architectures
    from architectures import ARCHITECTURES, architecture_modules
    declared = {n: ARCHITECTURES.entry(n).module for n in ARCHITECTURES.names()}
    for module in architecture_modules():
        importlib.import_module(module)
    for name, module in declared.items():
        entry = ARCHITECTURES.entry(name)
        assert entry.loaded and entry.factory.__module__ == module, name
        assert entry.factory.__name__ == name, name
    # no module registers a name the table lacks: the decorator refuses it
    with pytest.raises(ValueError, match="not declared"):
        architectures.register_architecture("not_in_the_table")(lambda **kw: None)
    # and a declared entry refuses metadata from its decorator (one place defines it)
    from benchmark.registry import Registry
    r = Registry("thing")
    r.declare("a", __name__, family="F")
    with pytest.raises(ValueError, match="declared with its metadata"):
        r.register("a", family="G")(lambda: 1)


def test_lazy_entry_imports_its_module_on_first_use():
    code = ("import sys; from architectures import architecture_entry as e; "
            "a = e('transfuse'); print(a.name, 'timm' in sys.modules); a.search_space; print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["transfuse_s", "False", "True"]
