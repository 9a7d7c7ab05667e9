"""Using the tools: what an alias runs, a logged model on any patch size, progress output in a log
file, `bench ui` on a taken port and after its parent dies."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest


# ------------------------------------------------------------------ --arch transfuse
def test_an_alias_says_which_variant_it_runs_in_the_output_the_tags_and_the_help(capsys):
    from benchmark.run.run_args import ALIAS_TAG, add_config_arguments, alias_tags, resolve_config
    args = argparse.Namespace(arch="transfuse", loss=None, preset="smoke", config=None, seed=None, overrides=[])
    cfg = resolve_config(args)
    assert cfg.model.arch == "transfuse_s"
    err = capsys.readouterr().err
    assert "note: --arch transfuse is an alias: running transfuse_s (not transfuse_l" in err
    assert alias_tags("transfuse") == {ALIAS_TAG: "transfuse"}
    assert alias_tags("transfuse_l") == {} and alias_tags(None) == {}
    resolve_config(argparse.Namespace(**{**vars(args), "arch": "transfuse_l"}))
    assert "alias" not in capsys.readouterr().err                  # a variant named directly: no note
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    assert "aliases: transfuse = transfuse_s" in " ".join(p.format_help().split())


def test_bench_archs_names_what_each_alias_runs():
    from tests.conftest import ROOT
    out = subprocess.run([sys.executable, "-m", "benchmark.cli.main", "archs", "--no-cost"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "--arch transfuse is an alias: running transfuse_s (not transfuse_l" in out.stderr
