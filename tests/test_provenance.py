"""The training-code sha: what produced a number, including the committed search results a
registered network is built from (a new DiNTS topology changes ``dints`` without any code)."""
from __future__ import annotations

import json

import pytest


@pytest.fixture()
def project(tmp_path, monkeypatch):
    from benchmark.core import provenance
    (tmp_path / "architectures").mkdir()
    (tmp_path / "architectures" / "net.py").write_text("def f():\n    '''doc'''\n    return 1\n")
    (tmp_path / "architectures" / "net_genotype.json").write_text(
        json.dumps({"format": "x/1", "arch_code_a": [[1, 0]], "meta": {"mlflow_run_id": "a"}}))
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)
    provenance.training_code_sha.cache_clear()
    yield tmp_path
    provenance.training_code_sha.cache_clear()


def _sha():
    from benchmark.core import provenance
    provenance.training_code_sha.cache_clear()
    return provenance.training_code_sha()


def test_a_new_genotype_changes_the_sha_and_its_search_record_does_not(project):
    geno = project / "architectures" / "net_genotype.json"
    first = _sha()
    doc = json.loads(geno.read_text())
    geno.write_text(json.dumps({**doc, "meta": {"mlflow_run_id": "b", "budget_seconds": 12}}, indent=2))
    assert _sha() == first            # the search's record and the layout of the file are not the network
    geno.write_text(json.dumps({**doc, "arch_code_a": [[1, 1]]}))
    assert _sha() != first            # a path kept or dropped is


def test_comments_and_docstrings_leave_the_sha_and_code_changes_it(project):
    net = project / "architectures" / "net.py"
    first = _sha()
    net.write_text("def f():\n    # why\n    return 1\n")
    assert _sha() == first
    net.write_text("def f():\n    return 2\n")
    assert _sha() != first
