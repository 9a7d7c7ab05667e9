"""Reading the runs a leaderboard is computed from (MLflow or a run export) and grouping them.

A run becomes a ``RunRecord`` when it finished, carries the data tags every scored run has
(``REQUIRED_TAGS``) and was evaluated on test; its ``evaluation/per_nodule.csv`` artifact (or the
table ``bench rescore --log`` wrote, ``tracking.per_nodule_artifact``) is the source of every number
in the tables. Tuning trials (never evaluated on test), the leaderboard's
own runs and anything without the data tags are ignored.

Which runs share a table. A table holds runs that were scored on exactly the same test
nodules under the same rules: same data source, ground truth, split hash, preset, data content
hash, NSD tolerance and set of test nodule ids (``TableKey``). Runs that differ in any of these
are never mixed; when the filters leave more than one such group for one output file the command
stops and lists the groups and the option that picks one (``mixed_groups_message``).
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

from benchmark import PROJECT_ROOT
from benchmark.core.errors import TrackingError, UsageError
from benchmark.core.tracking import per_nodule_artifact
from benchmark.run.metrics import leaderboard_columns

#: arch tag of reference runs -> what they are (the ``reference`` tag value)
REFERENCE_ARCHS = {"inter_reader": "human", "readers_vs_truth": "human", "threshold_baseline": "baseline",
                   "phantom_ceiling": "phantom"}
#: tags every scored run carries (see ``benchmark.run.train.data_tags``)
REQUIRED_TAGS = ("arch", "loss", "preset", "data.source", "data.ground_truth", "data.split_hash",
                 "data.content_hash")

#: protocol.part tag -> the section its runs go to (any other part: ``default``); tuning trials and
#: validation-only rescoring runs are never test-evaluated, and are kept off the page should one be
PART_SECTIONS = {"final": "tuned", "loss": "loss", "shared": "shared", "swap": "swap",
                 "tuning": "excluded", "rescore": "excluded"}

#: the tag in which a protocol records its declared comparator (its ``reference_arch``) on every run
COMPARATOR_TAG = "protocol.comparator"


@dataclass
class RunRecord:
    """One finished, test-evaluated MLflow run and its per-nodule table."""
    run_id: str
    tags: dict
    metrics: dict
    config: dict
    end_time: int
    per_nodule: pd.DataFrame       # scored test nodules only
    n_gt_empty: int = 0            # test nodules left unscored (no ground truth at this spacing)
    #: the run's id in the store it was read from, when that is not ``run_id`` (an imported run:
    #: ``run_id`` is then its original id, the one leaderboards cite; see ``export.origin_run_id``)
    store_id: Optional[str] = None
    #: the run's validation Dice per epoch, (epoch, value) as MLflow logged it (``convergence``)
    val_dice: tuple = ()

    @property
    def local_id(self) -> str:
        """The id to give the tracking store this record came from (export, register)."""
        return self.store_id or self.run_id

    @property
    def arch(self) -> str:
        return self.tags["arch"]

    @property
    def loss(self) -> str:
        return self.tags["loss"]

    @property
    def reference(self) -> Optional[str]:
        """What kind of reference run this is (its ``reference`` tag; older runs: by arch), or None
        for a model. Any run tagged ``reference=<kind>`` becomes a reference row."""
        return self.tags.get("reference") or REFERENCE_ARCHS.get(self.arch)

    @property
    def section(self) -> str:
        """Which table the run belongs to: ``tuned`` (a protocol's final runs), ``loss`` (its loss
        study), ``shared`` (every architecture with one shared recipe), ``swap`` (an architecture with
        another's recipe), ``reference``, ``excluded`` (validation-only parts, never on the page), or
        ``default`` (everything else: default settings, ad-hoc runs)."""
        if self.reference:
            return "reference"
        part = self.tags.get("protocol.part")
        return PART_SECTIONS.get(part, "default")

    @property
    def seed(self) -> str:
        return self.tags.get("seed", "")

    @property
    def nsd_tolerance_mm(self) -> float:
        return float((self.config.get("eval") or {}).get("nsd_tolerance_mm", 1.0))


@dataclass(frozen=True)
class TableKey:
    """What runs must share to appear in one table."""
    dataset: str
    source: str
    ground_truth: str
    split_hash: str
    preset: str
    content_hash: str
    nsd_tolerance_mm: float
    test_set: str          # short hash of the sorted test nodule ids
    n_nodules: int

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.preset}"

    def describe(self) -> str:
        return (f"split {self.split_hash}, ground truth {self.ground_truth}, data {self.content_hash[:12]}, "
                f"NSD tolerance {self.nsd_tolerance_mm:g} mm, {self.n_nodules} test nodules ({self.test_set})")


def split_readers_vs_truth(runs: list[RunRecord]) -> list[RunRecord]:
    """The inter_reader run scores each radiologist twice: against the STAPLE of the other three
    (its metric columns) and against the phantom's true shape (its ``*_vs_truth`` columns). Each
    score becomes a reference row of its own, so that every number stands in its column: the
    ``inter_reader`` row keeps the first, a ``readers_vs_truth`` row (the same run) the second.
    Runs without scores against the truth (real data, phantom v1) pass unchanged."""
    from dataclasses import replace
    out = []
    for r in runs:
        truth = [c for c in r.per_nodule.columns if c.endswith("_vs_truth")]
        if r.arch != "inter_reader" or "dice_vs_truth" not in truth:
            out.append(r)
            continue
        staple = [c[: -len("_vs_truth")] for c in truth if c[: -len("_vs_truth")] in r.per_nodule.columns]
        out.append(replace(r, per_nodule=r.per_nodule.drop(columns=truth)))
        # its kind comes from REFERENCE_ARCHS, or the inter_reader run's own `reference` tag
        out.append(replace(r, tags={**r.tags, "arch": "readers_vs_truth"},
                           per_nodule=r.per_nodule.drop(columns=staple)))
    return out


def mlflow_filter(preset: Optional[str], source: Optional[str], ground_truth: Optional[str],
                   split_hash: Optional[str], data_hash: Optional[str], extra: Optional[str]) -> str:
    parts = ["attributes.status = 'FINISHED'"]
    for tag, value in (("preset", preset), ("data.source", source), ("data.ground_truth", ground_truth),
                       ("data.split_hash", split_hash)):
        if value:
            if "'" in value:
                raise UsageError(f"filter value {value!r} may not contain a quote")
            parts.append(f"tags.`{tag}` = '{value}'")
    if data_hash:
        parts.append(f"tags.`data.content_hash` LIKE '{data_hash.replace(chr(39), '')}%'")
    if extra:
        parts.append(extra)   # MLflow filters have no OR, so plain conjunction is safe
    return " and ".join(parts)


def collect_runs(cl, experiment_ids: list[str], filter_string: str, warn=None) -> list[RunRecord]:
    """Finished runs that were evaluated on test, with their per-nodule CSVs downloaded.

    Tuning trials (never evaluated on test), the leaderboard's own runs and anything without
    the data tags are ignored; a scored run whose CSV is missing is reported through ``warn``.
    """
    from benchmark.results.run_export import origin_run_id
    from benchmark.core.tracking import no_download_bars, search_all_runs
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    try:
        found = search_all_runs(cl, experiment_ids, filter_string)
    except Exception as e:  # noqa: BLE001 - MLflow raises its own exception types
        if "filter" in str(e).lower() or "invalid" in str(e).lower():
            raise UsageError(f"MLflow rejected the run filter {filter_string!r}: {str(e).splitlines()[0]}") from None
        raise TrackingError(f"could not search MLflow runs: {str(e).splitlines()[0]}") from None
    records = []
    with no_download_bars(), tempfile.TemporaryDirectory() as tmp:
        for run in found:
            rid = run.info.run_id
            dst = Path(tmp) / rid

            def read_csv(rid=rid, dst=dst, tags=run.data.tags):
                dst.mkdir(exist_ok=True)
                return pd.read_csv(cl.download_artifacts(rid, per_nodule_artifact(tags), str(dst)))

            def read_config(rid=rid, dst=dst, params=run.data.params):
                try:
                    dst.mkdir(exist_ok=True)
                    return yaml.safe_load(Path(cl.download_artifacts(rid, "config.yaml", str(dst))).read_text()) or {}
                except Exception:  # noqa: BLE001 - older runs: fall back to the params
                    return _unflatten(params)

            rec = _record(rid, dict(run.data.tags), dict(run.data.metrics), int(run.info.end_time or 0),
                          read_csv, read_config, warn)
            if rec is not None:
                rec.val_dice = tuple(_history(cl, rid, "val_dice", warn))
            if rec is not None and origin_run_id(rid, rec.tags) != rid:
                rec.run_id, rec.store_id = origin_run_id(rid, rec.tags), rid
            if rec is not None:
                records.append(rec)
    return records


def _history(cl, rid: str, key: str, warn) -> list[tuple[int, float]]:
    from benchmark.core.tracking import metric_history
    try:
        return metric_history(cl, rid, key)
    except Exception as e:  # noqa: BLE001 - a missing history only hides the convergence columns
        warn(f"run {rid}: could not read the history of {key} ({type(e).__name__})")
        return []


def _record(rid: str, tags: dict, metrics: dict, end_time: int, read_csv, read_config, warn) -> Optional[RunRecord]:
    """One run as a leaderboard record, or None (with a warning when it should have been one).
    The same rules whether the run comes from MLflow or from a run export."""
    if any(not tags.get(t) for t in REQUIRED_TAGS) or "test_dice" not in metrics:
        return None
    try:
        df = read_csv()
    except Exception as e:  # noqa: BLE001
        warn(f"run {rid} ({tags['arch']}) has test metrics but no readable evaluation/per_nodule.csv "
             f"({type(e).__name__}); left out")
        return None
    required = leaderboard_columns()    # the columns METRIC_SPECS makes leaderboard columns
    missing = [c for c in ("nodule_id", *required) if c not in df.columns]
    n_gt_empty = 0
    if not missing and "gt_empty" in df.columns:
        # nodules without ground truth at this spacing: unscored by every run alike
        empty = df["gt_empty"].astype(str).str.lower().isin(["true", "1"])
        n_gt_empty = int(empty.sum())
        df = df[~empty].reset_index(drop=True)
    if missing or df.empty or df["nodule_id"].duplicated().any() or \
            df[list(required)].isna().any().any():
        why = "lacks " + ", ".join(missing) if missing else "empty, NaN or duplicated nodule ids"
        warn(f"run {rid} ({tags['arch']}): per_nodule.csv is unusable ({why}); left out")
        return None
    return RunRecord(rid, tags, metrics, read_config(), end_time, df, n_gt_empty)


def records_from_export(path: Path, preset: Optional[str] = None, source: Optional[str] = None,
                        ground_truth: Optional[str] = None, split_hash: Optional[str] = None,
                        data_hash: Optional[str] = None, warn=None) -> tuple[list[RunRecord], str]:
    """The leaderboard records of a run export (``benchmark.results.run_export``) and the experiment it came
    from, with the filters ``collect_runs`` would apply in MLflow."""
    from benchmark.results.run_export import read_export, read_manifest
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    wanted = {"preset": preset, "data.source": source, "data.ground_truth": ground_truth,
              "data.split_hash": split_hash}
    records = []
    for run in read_export(path):
        if run.status != "FINISHED" or any(v and run.tags.get(k) != v for k, v in wanted.items()):
            continue
        if data_hash and not run.tags.get("data.content_hash", "").startswith(data_hash):
            continue
        rec = _record(run.run_id, dict(run.tags), dict(run.metrics), run.end_time,
                      lambda run=run: _require(run.per_nodule(), "no per-nodule table"),
                      lambda run=run: dict(run.config) or _unflatten(run.params), warn)
        if rec is not None:
            rec.val_dice = tuple((int(e), float(v)) for e, v in run.history.get("val_dice", []))
            records.append(rec)
    return records, read_manifest(path).get("experiment", "")


def _require(value, why: str):
    if value is None:
        raise FileNotFoundError(why)
    return value




def _unflatten(params: dict) -> dict:
    out: dict = {}
    for k, v in params.items():
        cur = out
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                break
        else:
            try:
                cur[parts[-1]] = yaml.safe_load(v)
            except yaml.YAMLError:
                cur[parts[-1]] = v
    return out


def _short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def table_key(run: RunRecord) -> TableKey:
    ids = sorted(run.per_nodule["nodule_id"].astype(str))
    t = run.tags
    return TableKey(dataset=t.get("data.dataset") or f"lidc-{t['data.source']}", source=t["data.source"],
                    ground_truth=t["data.ground_truth"], split_hash=t["data.split_hash"], preset=t["preset"],
                    content_hash=t["data.content_hash"], nsd_tolerance_mm=run.nsd_tolerance_mm,
                    test_set=_short_hash("\n".join(ids)), n_nodules=len(ids))


def group_runs(runs: list[RunRecord]) -> dict[str, list[tuple[TableKey, list[RunRecord]]]]:
    """Output name (``<dataset>-<preset>``) -> the compatible groups that would write to it."""
    groups: dict[TableKey, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(table_key(r), []).append(r)
    by_name: dict[str, list[tuple[TableKey, list[RunRecord]]]] = {}
    for key in sorted(groups, key=lambda k: (k.name, k.split_hash, k.ground_truth, k.content_hash, k.test_set)):
        by_name.setdefault(key.name, []).append((key, groups[key]))
    return by_name


def mixed_groups_message(name: str, groups: list[tuple[TableKey, list[RunRecord]]]) -> str:
    lines = [f"the runs for {name} come from {len(groups)} incompatible groups; a leaderboard never mixes "
             f"splits, ground truths, presets or test sets:"]
    for key, runs in groups:
        lines.append(f"  - {key.describe()}: {len(runs)} runs")
    differ = []
    keys = [k for k, _ in groups]
    for attr, opt in (("split_hash", "--split-hash"), ("ground_truth", "--ground-truth"),
                      ("content_hash", "--data-hash"), ("source", "--source")):
        if len({getattr(k, attr) for k in keys}) > 1:
            differ.append(opt)
    how = ("choose one with " + " / ".join(differ)) if differ else \
        "they differ in NSD tolerance or test nodules; choose one with --filter (an MLflow filter string)"
    lines.append(how)
    return "\n".join(lines)


def declared_comparator(runs: list[RunRecord], protocols_dir: Optional[Path] = None) -> str:
    """The architecture the runs' protocol declared as its comparator, or "" when they declare none.

    A protocol records it on every run (``COMPARATOR_TAG``). Runs of a protocol that predates the
    tag (cpu v6) record the name and the sha of the protocol file's bytes: the committed file of
    that name and sha (anywhere under ``protocols/``) is read for its ``reference_arch``. Runs of no
    protocol (``bench run``, ``bench suite``) declare no comparator, so their page has no
    pre-declared test. Runs that name different
    comparators are a usage error: one page answers one declared question.
    """
    found, untagged = set(), set()
    for r in runs:
        if r.reference:
            continue
        if COMPARATOR_TAG in r.tags:
            found.add(r.tags[COMPARATOR_TAG])
        elif "protocol.name" in r.tags and "protocol.sha" in r.tags:
            untagged.add((r.tags["protocol.name"], r.tags["protocol.sha"]))
    # each protocol file is looked up once per (name, sha), not once per run (117 runs on v6's page)
    found |= {_comparator_from_protocol_file(name, sha, protocols_dir or PROJECT_ROOT / "protocols")
              for name, sha in untagged}
    found.discard("")
    if len(found) > 1:
        raise UsageError(f"the runs of this table declare different comparators ({', '.join(sorted(found))}); "
                         "filter them to one protocol (--filter \"tags.`protocol.name` = '...'\")")
    return found.pop() if found else ""


def _comparator_from_protocol_file(name: str, sha: str, protocols_dir: Path) -> str:
    """``reference_arch`` of the committed protocol file named ``name`` whose bytes have the runs'
    sha (a finished protocol is kept, frozen, when a new version replaces it); "" when none has."""
    for path in sorted(protocols_dir.rglob("*.yaml")):
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest()[:12] != sha:
            continue
        spec = yaml.safe_load(raw)
        if isinstance(spec, dict) and spec.get("name") == name:
            return str(spec.get("reference_arch", ""))
    return ""
