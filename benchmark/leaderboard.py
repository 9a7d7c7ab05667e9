"""``bench leaderboard``: the benchmark's tables, generated from MLflow and nothing else.

    bench leaderboard [--preset cpu] [--ranking aggregate|rank] [--out DIR]

Every number in a leaderboard is recomputed from the runs' own ``evaluation/per_nodule.csv``
artifacts (not from their logged aggregates), so a row can always be traced back to its runs;
the run ids are printed beside it.

Which runs share a table. A table holds runs that were scored on exactly the same test
nodules under the same rules: same data source, ground truth, split hash, preset, data content
hash, NSD tolerance and set of test nodule ids. Runs that differ in any of these are never
mixed; when the filters leave more than one such group for one output file the command stops
and lists the groups and the option that picks one. Inside a table, a row is one
(architecture, loss) pair; its runs are its seeds. Two runs of the same configuration and seed
(re-runs) count once: the most recent one is used. Runs of one (architecture, loss) whose
configurations differ in more than the seed become separate rows, labelled by what differs.

Sections (``RunRecord.section``). With a protocol's final runs (tag ``protocol.part=final``) in
the group, they make the main table ("Tuned protocol") and every other model run goes to a
second one ("Default settings", with each row's gain from tuning); without, the default table
is the main one. A protocol's loss study (``protocol.part=loss``, plus the final runs of the
same architectures) is the last section. Reference rows appear in the main table.

Statistics per row (``benchmark.stats``; metric m in Dice, NSD, HD95 and any listed extra column):
  * mean ± std over seeds of each seed's mean over test nodules;
  * a 95% percentile interval from a two-level bootstrap: nodules resampled with one draw shared
    by every row of every section (paired), seeds resampled within each row;
  * median HD95 (mean over seeds of each seed's median), the count of empty predictions over
    all seeds x nodules, Dice by nodule size bin, parameters, MACs per patch, median latency
    and training time (means over seeds; the latter two depend on the machine named in the notes).

Ranking (models only). ``aggregate`` (default): rank by mean Dice. ``rank``: rank the models
on every test nodule by its Dice, average those ranks per model, rank the averages
(rank-then-aggregate, Maier-Hein et al. 2018). Both orders' summary numbers are shown. Each
row (models and references) is compared with the top-ranked model by a two-sided paired
Wilcoxon signed-rank test over the test nodules (per-nodule Dice averaged over seeds); the
p-values of one table form one Holm-corrected family. Each model is also compared with the
pre-declared reference architecture (``unet3d``), a second family. P(best) is the share of
two-level bootstrap resamples in which the model comes first under the chosen ranking.

Reference rows (``inter_reader``: each radiologist against the STAPLE of the other three;
``threshold_baseline``: the non-learned baseline) are shown below the models, marked, and not
ranked; they are deterministic, so only their latest run is used.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import yaml

from .errors import TrackingError, UsageError
from .protocol import REFERENCE_ARCH as REFERENCE_ARCH_NAME
from .stats import holm  # noqa: F401 - part of this module's interface (tests, scripts)

__all__ = ["RunRecord", "TableKey", "Row", "Leaderboard", "collect_runs", "group_runs", "build_leaderboard",
           "build_sections", "add_tuning_gain", "add_loss_tests",
           "render_markdown", "render_csv", "render_html", "write_leaderboard", "generate", "holm", "register"]

#: arch tag of reference runs -> what they are (the ``reference`` tag value)
REFERENCE_ARCHS = {"inter_reader": "human", "threshold_baseline": "baseline", "phantom_ceiling": "phantom"}
#: the per-nodule metrics a leaderboard reports: (CSV column, display name, higher is better)
METRICS = (("dice", "Dice", True), ("nsd", "NSD", True), ("hd95_mm", "HD95 (mm)", False))
SIZE_BINS = ("<6", "6-10", "10-20", ">=20")
SIZE_KEYS = {"<6": "lt6", "6-10": "6-10", "10-20": "10-20", ">=20": "ge20"}
RANKINGS = ("aggregate", "rank")
#: per-nodule columns shown when every run of a table has them: (CSV column, display, higher is better)
EXTRA_METRICS: list[tuple[str, str, bool]] = [("dice_vs_truth", "Dice vs truth", True)]
SECTION_TITLES = {"tuned": "Tuned protocol", "default": "Default settings", "loss": "Loss study"}
#: tags every scored run carries (see ``benchmark.train.data_tags``)
REQUIRED_TAGS = ("arch", "loss", "preset", "data.source", "data.ground_truth", "data.split_hash",
                 "data.content_hash")


# ---------------------------------------------------------------------------------------------
# reading MLflow
# ---------------------------------------------------------------------------------------------
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
        study), ``reference``, or ``default`` (everything else: default settings, ad-hoc runs)."""
        if self.reference:
            return "reference"
        part = self.tags.get("protocol.part")
        return {"final": "tuned", "loss": "loss"}.get(part, "default")

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


def _search_all(cl, experiment_ids: list[str], filter_string: str):
    runs, token = [], None
    while True:
        page = cl.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token,
                              order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _mlflow_filter(preset: Optional[str], source: Optional[str], ground_truth: Optional[str],
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
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    try:
        found = _search_all(cl, experiment_ids, filter_string)
    except Exception as e:  # noqa: BLE001 - MLflow raises its own exception types
        if "filter" in str(e).lower() or "invalid" in str(e).lower():
            raise UsageError(f"MLflow rejected the run filter {filter_string!r}: {str(e).splitlines()[0]}") from None
        raise TrackingError(f"could not search MLflow runs: {str(e).splitlines()[0]}") from None
    records = []
    quiet = _env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one bar per CSV would bury the table
    with quiet, tempfile.TemporaryDirectory() as tmp:
        for run in found:
            rid = run.info.run_id
            dst = Path(tmp) / rid

            def read_csv(rid=rid, dst=dst):
                dst.mkdir(exist_ok=True)
                return pd.read_csv(cl.download_artifacts(rid, "evaluation/per_nodule.csv", str(dst)))

            def read_config(rid=rid, dst=dst, params=run.data.params):
                try:
                    dst.mkdir(exist_ok=True)
                    return yaml.safe_load(Path(cl.download_artifacts(rid, "config.yaml", str(dst))).read_text()) or {}
                except Exception:  # noqa: BLE001 - older runs: fall back to the params
                    return _unflatten(params)

            rec = _record(rid, dict(run.data.tags), dict(run.data.metrics), int(run.info.end_time or 0),
                          read_csv, read_config, warn)
            if rec is not None:
                records.append(rec)
    return records


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
    missing = [c for c in ("nodule_id", *[m for m, _, _ in METRICS]) if c not in df.columns]
    n_gt_empty = 0
    if not missing and "gt_empty" in df.columns:
        # nodules without ground truth at this spacing: unscored by every run alike
        empty = df["gt_empty"].astype(str).str.lower().isin(["true", "1"])
        n_gt_empty = int(empty.sum())
        df = df[~empty].reset_index(drop=True)
    if missing or df.empty or df["nodule_id"].duplicated().any() or \
            df[[m for m, _, _ in METRICS]].isna().any().any():
        why = "lacks " + ", ".join(missing) if missing else "empty, NaN or duplicated nodule ids"
        warn(f"run {rid} ({tags['arch']}): per_nodule.csv is unusable ({why}); left out")
        return None
    return RunRecord(rid, tags, metrics, read_config(), end_time, df, n_gt_empty)


def records_from_export(path: Path, preset: Optional[str] = None, source: Optional[str] = None,
                        ground_truth: Optional[str] = None, split_hash: Optional[str] = None,
                        data_hash: Optional[str] = None, warn=None) -> tuple[list[RunRecord], str]:
    """The leaderboard records of a run export (``benchmark.export``) and the experiment it came
    from, with the filters ``collect_runs`` would apply in MLflow."""
    from .export import read_export, read_manifest
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
            records.append(rec)
    return records, read_manifest(path).get("experiment", "")


def _require(value, why: str):
    if value is None:
        raise FileNotFoundError(why)
    return value


@contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


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


# ---------------------------------------------------------------------------------------------
# rows and statistics
# ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    arch: str
    loss: str
    reference: Optional[str]
    runs: list[RunRecord]
    stats: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list[str]:
        return [r.seed for r in self.runs]

    def tag(self, name: str) -> str:
        """The tag's value when every run of the row agrees on it, else ''."""
        vals = {r.tags.get(name, "") for r in self.runs}
        return vals.pop() if len(vals) == 1 else ""


@dataclass
class Leaderboard:
    key: TableKey
    rows: list[Row]                # models in rank order, then references
    table: pd.DataFrame            # the CSV: one line per row, numbers unformatted
    per_nodule: pd.DataFrame       # row label x nodule id: Dice averaged over seeds
    size_counts: dict
    ranking: str
    n_boot: int
    boot_seed: int
    experiment: str = ""
    n_source_runs: int = 0
    devices: list = field(default_factory=list)
    n_unscored: int = 0            # test nodules without ground truth at this spacing
    section: str = "default"       # tuned | default | loss (see RunRecord.section)
    metrics: tuple = METRICS       # METRICS plus the EXTRA_METRICS every run of the table has
    boots: dict = field(default_factory=dict)   # row label -> metric -> two-level bootstrap means
    reference_arch: str = ""       # the pre-declared comparator, when it has a row
    #: the tables below the main one (default settings when the main one is tuned; the loss study)
    sections: list = field(default_factory=list)


def _protocol_config(run: RunRecord) -> dict:
    """The run's config as it bears on the result: without its name, and without the early
    stopping patience when early stopping never fired (it then made no difference, so such a
    run is the same experiment as one with any larger patience; see RunConfig.budget_fingerprint)."""
    from .config import flatten, ran_full_budget
    flat = flatten(run.config) if run.config else {}
    flat.pop("name", None)
    if ran_full_budget(run.tags.get("stopped_early"), run.metrics.get("epochs_completed"), flat.get("train.epochs")):
        flat.pop("train.early_stopping_patience", None)
    return {k: json.dumps(v, sort_keys=True) for k, v in flat.items()}


def _config_without_seed(run: RunRecord) -> dict:
    flat = _protocol_config(run)
    flat.pop("train.seed", None)
    return flat


def make_rows(runs: list[RunRecord]) -> list[Row]:
    """(arch, loss[, config variant]) rows; re-runs of one configuration and seed count once."""
    latest: dict[tuple, RunRecord] = {}
    for r in runs:
        # a reference is deterministic: its latest run stands for it
        ident = (r.arch, r.loss) if r.reference else \
            (r.arch, r.loss, json.dumps(_protocol_config(r), sort_keys=True) if r.config else r.run_id)
        if ident not in latest or (r.end_time, r.run_id) > (latest[ident].end_time, latest[ident].run_id):
            latest[ident] = r
    by_pair: dict[tuple[str, str], list[RunRecord]] = {}
    for r in latest.values():
        by_pair.setdefault((r.arch, r.loss), []).append(r)
    rows = []
    for (arch, loss), group in sorted(by_pair.items()):
        reference = REFERENCE_ARCHS.get(arch)
        flats = {r.run_id: _config_without_seed(r) for r in group}
        variants: dict[str, list[RunRecord]] = {}
        for r in group:
            variants.setdefault(json.dumps(flats[r.run_id], sort_keys=True), []).append(r)
        differing = sorted({k for f in flats.values() for k in f
                            if len({fl.get(k) for fl in flats.values()}) > 1}) if len(variants) > 1 else []
        for members in variants.values():
            members.sort(key=lambda r: (_seed_sort(r.seed), r.run_id))
            label = arch if reference or loss in ("", "none") else f"{arch} / {loss}"
            if differing:
                f = flats[members[0].run_id]
                label += " [" + ", ".join(f"{k}={json.loads(f[k]) if k in f else '-'}" for k in differing) + "]"
            rows.append(Row(label, arch, loss, reference, members))
    rows.sort(key=lambda r: r.label)
    return rows


def _seed_sort(seed: str):
    try:
        return (0, int(seed), "")
    except ValueError:
        return (1, 0, seed)


def _rank_desc(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return rankdata(-np.asarray(values, dtype=float), method="min")


def build_leaderboard(key: TableKey, runs: list[RunRecord], ranking: str = "aggregate", n_boot: int = 2000,
                      boot_seed: int = 0, section: str = "default") -> Leaderboard:
    """One table: rows, their two-level bootstrap statistics (``benchmark.stats``), ranks and tests."""
    from . import stats
    from .protocol import REFERENCE_ARCH
    if ranking not in RANKINGS:
        raise UsageError(f"unknown ranking {ranking!r} (choose from {', '.join(RANKINGS)})")
    rows = make_rows(runs)
    nodules = sorted(rows[0].runs[0].per_nodule["nodule_id"].astype(str))
    n = len(nodules)
    metrics = METRICS + tuple(x for x in EXTRA_METRICS if all(x[0] in r.per_nodule.columns for r in runs))
    has_empty = all("empty_pred" in r.per_nodule.columns for r in runs)

    def matrix(row: Row, col: str) -> np.ndarray:
        """(seeds x nodules) in one nodule order."""
        return np.stack([r.per_nodule.assign(nodule_id=r.per_nodule["nodule_id"].astype(str))
                         .set_index("nodule_id").loc[nodules, col].to_numpy(float) for r in row.runs])

    mats = {row.label: {m: matrix(row, m) for m, _, _ in metrics} for row in rows}
    size_of = _size_bins(rows[0].runs[0].per_nodule, nodules)
    size_counts = {b: int(sum(s == b for s in size_of)) for b in SIZE_BINS}

    # one nodule draw for every row of every section (same seed, same nodules: paired across
    # tables too, e.g. tuned minus default); each row's seeds drawn from its own stream
    res = stats.draw_resamples({f"{section}:{row.label}": len(row.runs) for row in rows}, n, n_boot, boot_seed)
    boots: dict[str, dict[str, np.ndarray]] = {}
    for row in rows:
        s = row.stats
        boots[row.label] = {}
        for m, _, _ in metrics:
            per_seed = mats[row.label][m].mean(axis=1)           # each seed's mean over nodules
            boot = stats.two_level_bootstrap(mats[row.label][m], res, f"{section}:{row.label}")
            boots[row.label][m] = boot
            s[f"{m}_mean"] = float(per_seed.mean())
            s[f"{m}_std"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")
            s[f"{m}_ci_low"], s[f"{m}_ci_high"] = stats.percentile_interval(boot)
        s["hd95_mm_median"] = stats.seed_median(mats[row.label]["hd95_mm"])
        s["n_empty"], s["n_predictions"] = stats.empty_count(matrix(row, "empty_pred")) if has_empty else \
            (float("nan"), float("nan"))
        dice_nod = mats[row.label]["dice"].mean(axis=0)
        for b in SIZE_BINS:
            sel = np.array([x == b for x in size_of])
            s[f"dice_size_{SIZE_KEYS[b]}"] = float(dice_nod[sel].mean()) if sel.any() else float("nan")
        for k in ("params", "macs_per_patch", "latency_ms_median", "train_seconds"):
            vals = [r.metrics[k] for r in row.runs if k in r.metrics]
            s[k] = float(np.mean(vals)) if vals else float("nan")
        s["train_seconds_total"] = float(sum(r.metrics.get("train_seconds", 0.0) for r in row.runs))

    models = [r for r in rows if not r.reference]
    refs = [r for r in rows if r.reference]
    per_nodule_dice = {r.label: mats[r.label]["dice"].mean(axis=0) for r in rows}
    reference_arch = ""
    if models:
        dice = np.stack([per_nodule_dice[r.label] for r in models])   # models x nodules
        nodule_ranks = np.stack([_rank_desc(dice[:, j]) for j in range(n)], axis=1)
        mean_rank = nodule_ranks.mean(axis=1)
        agg = np.array([r.stats["dice_mean"] for r in models])
        if ranking == "aggregate":
            final = _rank_desc(agg)
            pb = stats.p_best(np.stack([boots[r.label]["dice"] for r in models]))
        else:
            final = _rank_desc(-mean_rank)
            pb = stats.rank_p_best([mats[r.label]["dice"] for r in models],
                                   [f"{section}:{r.label}" for r in models], res)
        for i, r in enumerate(models):
            r.stats.update(rank=int(final[i]), mean_nodule_rank=float(mean_rank[i]), p_best=float(pb[i]))
        order = sorted(range(len(models)), key=lambda i: (final[i], -agg[i], models[i].label))
        models = [models[i] for i in order]
        # against the top-ranked model: every other row, one Holm family
        for label, (p, q) in stats.pvalues_against(per_nodule_dice, models[0].label,
                                                   [r.label for r in models + refs]).items():
            next(r for r in rows if r.label == label).stats.update(wilcoxon_p=p, wilcoxon_p_holm=q)
        # against the pre-declared reference architecture: the other models, one Holm family
        ref_row = next((r for r in models if r.arch == REFERENCE_ARCH), None)
        if ref_row is not None:
            reference_arch = ref_row.label
            for label, (p, q) in stats.pvalues_against(per_nodule_dice, ref_row.label,
                                                       [r.label for r in models]).items():
                next(r for r in rows if r.label == label).stats.update(p_vs_reference=p, p_vs_reference_holm=q)
    refs.sort(key=lambda r: (-r.stats["dice_mean"], r.label))
    ordered = models + refs

    records = []
    for r in ordered:
        s = r.stats
        rec = {"section": section, "rank": s.get("rank", ""), "row": r.label, "arch": r.arch, "loss": r.loss,
               "reference": r.reference or "", "n_seeds": len(r.runs), "seeds": ";".join(r.seeds),
               "n_nodules": n}
        for m, _, _ in metrics:
            for suffix in ("mean", "std", "ci_low", "ci_high"):
                rec[f"{m}_{suffix}"] = s[f"{m}_{suffix}"]
        rec["hd95_mm_median"] = s["hd95_mm_median"]
        rec["n_empty"], rec["n_predictions"] = s["n_empty"], s["n_predictions"]
        for b in SIZE_BINS:
            rec[f"dice_size_{SIZE_KEYS[b]}"] = s[f"dice_size_{SIZE_KEYS[b]}"]
        for k in ("params", "macs_per_patch", "latency_ms_median", "train_seconds"):
            rec[k] = s[k]
        rec["mean_nodule_rank"] = s.get("mean_nodule_rank", float("nan"))
        rec["p_best"] = s.get("p_best", float("nan"))
        rec["wilcoxon_p"] = s.get("wilcoxon_p", float("nan"))
        rec["wilcoxon_p_holm"] = s.get("wilcoxon_p_holm", float("nan"))
        rec["p_vs_reference_holm"] = s.get("p_vs_reference_holm", float("nan"))
        rec["study"] = r.tag("optuna.study")
        rec["tuning_budget"] = r.tag("tuning.budget")
        rec["protocol"] = f"{r.tag('protocol.name')} v{r.tag('protocol.version')}" if r.tag("protocol.name") else ""
        rec["run_ids"] = ";".join(x.run_id for x in r.runs)
        records.append(rec)
    per_nodule = pd.DataFrame({r.label: per_nodule_dice[r.label] for r in ordered}, index=nodules).T
    devices = sorted({x.tags.get("device", "") for r in models for x in r.runs} - {""})
    return Leaderboard(key, ordered, pd.DataFrame.from_records(records), per_nodule, size_counts, ranking,
                       n_boot, boot_seed, devices=devices,
                       n_unscored=max(x.n_gt_empty for r in ordered for x in r.runs), section=section,
                       metrics=metrics, boots=boots, reference_arch=reference_arch)


def add_tuning_gain(default: Leaderboard, tuned: Leaderboard) -> None:
    """Each default row's gain from tuning: the tuned row of the same (architecture, loss) minus
    it, mean Dice with the interval of the paired bootstrap difference (same nodule draws)."""
    from . import stats
    by_pair = {(r.arch, r.loss): r for r in tuned.rows if not r.reference}
    for r in default.rows:
        t = by_pair.get((r.arch, r.loss))
        if r.reference or t is None:
            continue
        mean, lo, hi = stats.difference_interval(tuned.boots[t.label]["dice"], default.boots[r.label]["dice"])
        r.stats.update(gain=t.stats["dice_mean"] - r.stats["dice_mean"], gain_ci_low=lo, gain_ci_high=hi)
    default.table["tuning_gain"] = [r.stats.get("gain", float("nan")) for r in default.rows]
    default.table["tuning_gain_ci_low"] = [r.stats.get("gain_ci_low", float("nan")) for r in default.rows]
    default.table["tuning_gain_ci_high"] = [r.stats.get("gain_ci_high", float("nan")) for r in default.rows]


def add_loss_tests(loss: Leaderboard, comparator: str = "dice_bce") -> None:
    """Paired Wilcoxon of every loss against ``comparator`` on the same architecture (per-nodule
    Dice, mean over seeds); all comparisons of the loss study form one Holm family."""
    from . import stats
    pairs = []
    for r in loss.rows:
        base = next((b for b in loss.rows if b.arch == r.arch and b.loss == comparator), None)
        if base is not None and r is not base:
            pairs.append((r, stats.wilcoxon_p(loss.per_nodule.loc[r.label].to_numpy(float),
                                              loss.per_nodule.loc[base.label].to_numpy(float))))
    for (r, p), q in zip(pairs, stats.holm([p for _, p in pairs])):
        r.stats.update(p_vs_comparator=p, p_vs_comparator_holm=q)
    loss.rows.sort(key=lambda r: (r.arch, r.loss != comparator, -r.stats["dice_mean"], r.label))
    order = {r.label: i for i, r in enumerate(loss.rows)}
    loss.table = loss.table.assign(_o=loss.table["row"].map(order)).sort_values("_o").drop(columns="_o") \
        .reset_index(drop=True)
    loss.table["p_vs_dice_bce_holm"] = [r.stats.get("p_vs_comparator_holm", float("nan")) for r in loss.rows]


def _size_bins(df: pd.DataFrame, nodules: list[str]) -> list[str]:
    d = df.assign(nodule_id=df["nodule_id"].astype(str)).set_index("nodule_id")
    if "size_bin" in d.columns:
        return [str(v) for v in d.loc[nodules, "size_bin"]]
    if "diameter_mm" in d.columns:
        from .metrics import size_bin   # imports MONAI (seconds): only when the CSV lacks size_bin
        return [size_bin(float(v)) for v in d.loc[nodules, "diameter_mm"]]
    return [""] * len(nodules)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def _num(x, digits: int) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _metric_cell(s: dict, m: str, digits: int) -> str:
    mean, std = s[f"{m}_mean"], s[f"{m}_std"]
    cell = _num(mean, digits) + ("" if math.isnan(std) else f" ± {_num(std, digits)}")
    return cell + f" [{_num(s[f'{m}_ci_low'], digits)}, {_num(s[f'{m}_ci_high'], digits)}]"


def _si(x: float, unit: str = "") -> str:
    if x is None or math.isnan(x):
        return "–"
    if x == 0:
        return "0"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}".rstrip()
    return f"{x:.0f}{(' ' + unit) if unit else ''}"


def _p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def _hours(row: Row) -> str:
    """Tuning and final training time of a tuned row, in CPU or GPU hours."""
    kind = "GPU" if any("cpu" not in x.tags.get("device", "cpu").lower() for x in row.runs) else "CPU"
    tuning = float(row.tag("tuning.seconds") or "nan") / 3600
    final = row.stats.get("train_seconds_total", float("nan")) / 3600
    return f"{_num(tuning, 1)} + {_num(final, 1)} {kind} h"


def table_cells(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the markdown and HTML renderings."""
    if lb.section == "loss":
        return _loss_cells(lb)
    tol = f"{lb.key.nsd_tolerance_mm:g}"
    extra = [x for x in lb.metrics if x not in METRICS]
    has_gain = any("gain" in r.stats for r in lb.rows)
    header = ["#", "Model", "Seeds", "Dice", f"NSD@{tol}mm", "HD95 (mm)", "HD95 median (mm)", "Empty"]
    header += [name for _, name, _ in extra]
    header += [f"Dice {b} mm (n={lb.size_counts[b]})" for b in SIZE_BINS]
    header += ["Params", "MACs/patch", "Latency (ms)", "Train (s)", "Mean nodule rank", "P(best)",
               "Wilcoxon p vs #1 (Holm)"]
    if lb.reference_arch:
        header.append(f"p vs {lb.reference_arch} (Holm)")
    if lb.section == "tuned":
        header += ["Study and tuning budget", "Tuning + final"]
    if has_gain:
        header.append("Gain from tuning (Dice)")
    body = []
    for r in lb.rows:
        s = r.stats
        first = "ref" if r.reference else str(s["rank"])
        name = f"{r.label} ({'reference: ' + r.reference})" if r.reference else r.label
        seeds = "det." if r.reference else str(len(r.runs))
        cells = [first, name, seeds, _metric_cell(s, "dice", 3), _metric_cell(s, "nsd", 3),
                 _metric_cell(s, "hd95_mm", 2), _num(s["hd95_mm_median"], 2), _empty_cell(s)]
        cells += [_metric_cell(s, m, 3) for m, _, _ in extra]
        cells += [_num(s[f"dice_size_{SIZE_KEYS[b]}"], 3) for b in SIZE_BINS]
        cells += [_si(s["params"]), _si(s["macs_per_patch"]), _num(s["latency_ms_median"], 1),
                  _num(s["train_seconds"], 0), _num(s.get("mean_nodule_rank", float("nan")), 2),
                  _num(s.get("p_best", float("nan")), 2)]
        is_top = not r.reference and r is lb.rows[0]
        cells.append("(top)" if is_top else _p(s.get("wilcoxon_p_holm", float("nan"))))
        if lb.reference_arch:
            cells.append("(reference)" if r.label == lb.reference_arch else
                         _p(s.get("p_vs_reference_holm", float("nan"))))
        if lb.section == "tuned":
            study = r.tag("optuna.study")
            cells += [f"{study}: {r.tag('tuning.budget')}" if study else "–",
                      "–" if r.reference else _hours(r)]
        if has_gain:
            cells.append(f"{s['gain']:+.3f} [{s['gain_ci_low']:+.3f}, {s['gain_ci_high']:+.3f}]" if "gain" in s
                         else "–")
        body.append(cells)
    return header, body


def _empty_cell(s: dict) -> str:
    n = s.get("n_empty", float("nan"))
    return "–" if isinstance(n, float) and math.isnan(n) else f"{n:.0f}/{s['n_predictions']:.0f}"


def _loss_cells(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    header = ["Architecture", "Loss", "Seeds", "Dice", "HD95 (mm)", "HD95 median (mm)", "Empty",
              "Wilcoxon p vs dice_bce (Holm)"]
    body = []
    for r in lb.rows:
        s = r.stats
        body.append([r.arch, r.loss, str(len(r.runs)), _metric_cell(s, "dice", 3), _metric_cell(s, "hd95_mm", 2),
                     _num(s["hd95_mm_median"], 2), _empty_cell(s),
                     "(comparator)" if r.loss == "dice_bce" else _p(s.get("p_vs_comparator_holm", float("nan")))])
    return header, body


def _notes(lb: Leaderboard) -> list[str]:
    rank = ("aggregate-then-rank: models ranked by mean Dice" if lb.ranking == "aggregate" else
            "rank-then-aggregate: models ranked on each test nodule by Dice, then by their mean rank")
    sections = [lb] + lb.sections
    notes = [
        f"Test set: {lb.key.describe()}."
        + (f" {lb.n_unscored} further test nodules have no ground-truth voxel in the window at this spacing "
           f"and are scored by no row." if lb.n_unscored else ""),
        "Metric cells: mean ± std over seeds of each seed's mean over test nodules, then a 95% percentile "
        f"interval from a two-level bootstrap ({lb.n_boot} resamples, seed {lb.boot_seed}): each resample draws "
        "the test nodules with replacement (one draw shared by every row of every table, so comparisons are "
        "paired) and, within each model, its seeds with replacement; the resample's value is the mean over the "
        "drawn seeds of the mean over the drawn nodules. A model whose seeds disagree therefore gets a wider "
        "interval than one whose seeds agree.",
        "HD95: the mean is dominated by empty predictions, which score the window diagonal; the median "
        "(mean over seeds of each seed's median over nodules) is not. Empty: predictions with no foreground "
        "voxel, over all seeds x test nodules.",
        f"Ranking: {rank} (ties share the better rank). Mean nodule rank is always the rank-then-aggregate "
        "score; P(best) is the share of two-level bootstrap resamples in which the model is first under the "
        "chosen ranking.",
        "Wilcoxon: two-sided paired signed-rank tests over the test nodules of per-nodule Dice (mean over "
        "seeds). 'vs #1' compares every row with the top-ranked model (a post-hoc comparison); "
        f"'vs {REFERENCE_ARCH_NAME}' compares every model with the pre-declared reference architecture, the seed "
        "paper's model. Each column of each table is one Holm-corrected family.",
        "Reference rows are not ranked and are deterministic (det.: their latest run is used). inter_reader = "
        "each radiologist's mask against the STAPLE of the other three, averaged over the four radiologists; "
        "threshold_baseline = non-learned intensity threshold. Why readers and models have different "
        "ground truths: a reader scored against the four-reader STAPLE would be scored partly against their "
        "own mask, which inflates agreement, so each reader is scored against the other three; the models "
        "contributed to no ground truth, so they are scored against the best one available, the four-reader "
        "STAPLE. The human row's reference has one reader fewer, which makes it a slightly conservative "
        "estimate of reader agreement.",
        "Params, MACs/patch, latency and training time are means over seeds; latency and training time were "
        "measured on: " + (", ".join(lb.devices) if lb.devices else "unknown") + ".",
    ]
    if any(x.section == "tuned" for x in sections):
        notes.append(
            "Tuned protocol: each architecture was tuned by its own Optuna study on the validation split with "
            "the same budget for all (named in each row: trials x epochs per trial, pruner), over the shared "
            "optimiser space plus the architecture's own space; the best trial's exact configuration then "
            "trained the listed seeds with the preset's epoch budget. 'Tuning + final' is the wall time of the "
            "study's trials and the training time of the final runs. The default-settings table shows the same "
            "architectures untuned; its gain column is tuned minus default mean Dice with the 95% interval of "
            "the paired two-level bootstrap difference.")
    if any(x.section == "loss" for x in sections):
        notes.append(
            "Loss study: on the listed architectures, each loss trained with that architecture's tuned "
            "settings (loss at its defaults) and the same seeds; each loss is compared with dice_bce on the "
            "same architecture by a paired Wilcoxon test over nodules; all comparisons form one Holm family.")
    return notes


def _generated_line(lb: Leaderboard) -> str:
    return (f"Generated by `bench leaderboard` from MLflow experiment `{lb.experiment}` "
            f"({lb.n_source_runs} runs in this table); do not edit by hand.")


def _markdown_table(lb: Leaderboard) -> list[str]:
    header, body = table_cells(lb)
    esc = [[c.replace("|", "\\|") for c in row] for row in body]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in esc]


def _versions(lb: Leaderboard) -> str:
    """The phantom and protocol versions the page's runs came from (from their tags)."""
    runs = [x for r in _all_rows(lb) for x in r.runs]
    phantoms = sorted({x.tags.get("data.phantom_version", "") for x in runs} - {"", "none"})
    protocols = sorted({f"{x.tags['protocol.name']} v{x.tags.get('protocol.version', '?')}"
                        for x in runs if x.tags.get("protocol.name")})
    parts = [f"phantom v{'/'.join(phantoms)}"] if phantoms else []
    parts += [f"protocol {', '.join(protocols)}"] if protocols else ["no declared protocol"]
    return ", ".join(parts)


def title(lb: Leaderboard) -> str:
    return f"Leaderboard: {lb.key.dataset}, {lb.key.preset} preset ({_versions(lb)})"


def provenance(row: Row) -> tuple[str, bool]:
    """The commits a row's runs came from, and whether they disagree on the training code
    (``benchmark.provenance``: a hash of the code that trains and scores, tagged on every run)."""
    from .provenance import TAG
    commits = sorted({(x.tags.get("mlflow.source.git.commit") or x.tags.get("git.commit") or "?")[:8]
                      for x in row.runs})
    code = {x.tags.get(TAG) for x in row.runs if x.tags.get(TAG)}
    return ", ".join(commits), len(code) > 1


def render_markdown(lb: Leaderboard) -> str:
    out = [f"# {title(lb)}", "", _generated_line(lb), ""]
    if lb.sections:
        out += [f"## {SECTION_TITLES[lb.section]}", ""]
    out += _markdown_table(lb)
    for sec in lb.sections:
        out += ["", f"## {SECTION_TITLES[sec.section]}", ""] + _markdown_table(sec)
    out += ["", "## Notes", ""] + [f"- {n}" for n in _notes(lb)]
    out += ["", "## MLflow runs", "",
            "Each row's runs and the commits they ran at; a row marked **code changed** has runs trained by "
            "different training code (its runs disagree on the `code.training_sha` tag).", ""]
    for r in _all_rows(lb):
        runs = ", ".join(f"seed {x.seed}: `{x.run_id}`" if not r.reference else f"`{x.run_id}`" for x in r.runs)
        commits, changed = provenance(r)
        flag = " **code changed**" if changed else ""
        out.append(f"- {_run_list_label(lb, r)}: {runs} (commit {commits}){flag}")
    return "\n".join(out) + "\n"


def _all_rows(lb: Leaderboard) -> list[Row]:
    """Every row of every section, each once (the loss study reuses the final runs' rows)."""
    seen, out = set(), []
    for sec in [lb] + lb.sections:
        for r in sec.rows:
            key = tuple(x.run_id for x in r.runs)
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def _run_list_label(lb: Leaderboard, row: Row) -> str:
    """A row's name in the run listing: with its section's title when there are sections."""
    if not lb.sections or row.reference:
        return row.label
    sec = next(s for s in [lb] + lb.sections if row in s.rows)
    return f"{SECTION_TITLES[sec.section]}: {row.label}"


def render_csv(lb: Leaderboard) -> str:
    table = pd.concat([lb.table] + [s.table for s in lb.sections], ignore_index=True) if lb.sections else lb.table
    return table.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower cost, higher score), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def make_plots(lb: Leaderboard) -> dict[str, bytes]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    models = [r for r in lb.rows if not r.reference]
    refs = [r for r in lb.rows if r.reference]

    # Dice vs MACs, Pareto front
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = [(r.stats["macs_per_patch"], r.stats["dice_mean"]) for r in models
           if r.stats["macs_per_patch"] > 0 and not math.isnan(r.stats["macs_per_patch"])]
    costed = [r for r in models if r.stats["macs_per_patch"] > 0 and not math.isnan(r.stats["macs_per_patch"])]
    front = set(pareto_front(pts))
    for i, (r, (x, y)) in enumerate(zip(costed, pts)):
        s = r.stats
        ax.errorbar(x, y, yerr=[[y - s["dice_ci_low"]], [s["dice_ci_high"] - y]], fmt="o", capsize=3,
                    color="C3" if i in front else "C0", ms=7 if i in front else 5)
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    if front:
        fp = sorted((pts[i] for i in front))
        ax.step([p[0] for p in fp], [p[1] for p in fp], where="post", color="C3", lw=1, ls="--",
                label="Pareto front (fewer MACs, higher Dice)")
    for j, r in enumerate(refs):
        ax.axhline(r.stats["dice_mean"], color=f"C{j + 4}", ls=":", lw=1.2, label=f"{r.label} (reference)")
    if pts:
        ax.set_xscale("log")
        ax.margins(x=0.2)     # room for the labels of the extreme points
    ax.set_xlabel("MACs per patch (log scale)")
    ax.set_ylabel("mean test Dice (95% bootstrap CI)")
    ax.set_title(f"Dice vs compute, {lb.key.dataset} [{lb.key.preset}]", fontsize=10)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    plots["dice_vs_macs"] = _png(fig)

    # per-nodule Dice distribution per row
    labels = [r.label for r in lb.rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(labels) + 2), 4.5))
    data = [lb.per_nodule.loc[lab].to_numpy(float) for lab in labels]
    ax.boxplot(data, showmeans=True, widths=0.6, flierprops={"markersize": 0})
    jitter = np.random.default_rng(0)
    for i, (d, r) in enumerate(zip(data, lb.rows), start=1):
        ax.scatter(i + jitter.uniform(-0.18, 0.18, len(d)), d, s=6, alpha=.45,
                   color="C1" if r.reference else "C0", zorder=3)
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels([lab + (" (ref)" if r.reference else "") for lab, r in zip(labels, lb.rows)],
                       rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("per-nodule Dice (mean over seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Per-nodule test Dice (box: quartiles, triangle: mean)", fontsize=10)
    ax.grid(alpha=.3, axis="y")
    fig.tight_layout()
    plots["dice_per_nodule"] = _png(fig)

    # Dice by size bin
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = np.arange(len(SIZE_BINS))
    for i, r in enumerate(lb.rows):
        ys = [r.stats[f"dice_size_{SIZE_KEYS[b]}"] for b in SIZE_BINS]
        ax.plot(xs, ys, marker="o", ls=":" if r.reference else "-", label=r.label + (" (ref)" if r.reference else ""),
                color=f"C{i % 10}")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{b} mm\n(n={lb.size_counts[b]})" for b in SIZE_BINS])
    ax.set_ylabel("mean test Dice")
    ax.set_ylim(0, 1)
    ax.set_title("Dice by nodule diameter", fontsize=10)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plots["dice_by_size"] = _png(fig)
    return plots


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f0f0f0}td:nth-child(2),th:nth-child(2){text-align:left}tr.ref{background:#fff6e0;font-style:italic}
img{max-width:100%;margin:1em 0}code{font-size:12px}"""


def render_html(lb: Leaderboard, plots: dict[str, bytes]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             f"<title>Leaderboard {e(lb.key.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title(lb))}</h1>",
             f"<p>{e(_generated_line(lb)).replace('`', '')}</p>"]
    for sec in [lb] + lb.sections:
        if lb.sections:
            parts.append(f"<h2>{e(SECTION_TITLES[sec.section])}</h2>")
        header, body = table_cells(sec)
        parts.append("<table><thead><tr>")
        parts += [f"<th>{e(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for r, cells in zip(sec.rows, body):
            parts.append(f"<tr class='{'ref' if r.reference else 'model'}'>"
                         + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("<h2>Notes</h2><ul>")
    parts += [f"<li>{e(n)}</li>" for n in _notes(lb)]
    parts.append("</ul><h2>Plots</h2>")
    captions = {"dice_vs_macs": "Mean Dice against MACs per patch; red points and the dashed step are the Pareto "
                                "front; dotted lines are the reference rows.",
                "dice_per_nodule": "Distribution of per-nodule Dice per row.",
                "dice_by_size": "Mean Dice per nodule-diameter bin."}
    for name, png in plots.items():
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{e(captions.get(name, name))}</figcaption></figure>")
    parts.append("<h2>MLflow runs</h2><ul>")
    for r in _all_rows(lb):
        ids = ", ".join(f"seed {e(x.seed)}: <code>{e(x.run_id)}</code>" if not r.reference
                        else f"<code>{e(x.run_id)}</code>" for x in r.runs)
        parts.append(f"<li>{e(_run_list_label(lb, r))}: {ids}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


def write_leaderboard(lb: Leaderboard, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / lb.key.name
    files = [(base.with_suffix(".md"), render_markdown(lb)), (base.with_suffix(".csv"), render_csv(lb)),
             (base.with_suffix(".html"), render_html(lb, make_plots(lb)))]
    for path, text in files:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return [p for p, _ in files]


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def build_sections(key: TableKey, runs: list[RunRecord], ranking: str = "aggregate", n_boot: int = 2000,
                   boot_seed: int = 0) -> Leaderboard:
    """The main table and the sections below it (see ``RunRecord.section``): with tuned runs, the
    tuned table comes first and the default-settings table (with each architecture's gain from
    tuning) second; without, the default-settings table is the main one. The loss study, when
    there is one, comes last. Reference rows are shown in the main table only."""
    refs = [r for r in runs if r.section == "reference"]
    tuned = [r for r in runs if r.section == "tuned"]
    default = [r for r in runs if r.section == "default"]
    if tuned:
        lb = build_leaderboard(key, tuned + refs, ranking, n_boot, boot_seed, section="tuned")
        if default:
            d = build_leaderboard(key, default, ranking, n_boot, boot_seed, section="default")
            add_tuning_gain(d, lb)
            lb.sections.append(d)
    else:
        lb = build_leaderboard(key, default + refs, ranking, n_boot, boot_seed, section="default")
    loss_archs = {r.arch for r in runs if r.section == "loss"}
    if loss_archs:
        study = [r for r in runs if r.section in ("tuned", "loss") and r.arch in loss_archs]
        ls = build_leaderboard(key, study, ranking, n_boot, boot_seed, section="loss")
        add_loss_tests(ls)
        lb.sections.append(ls)
    return lb


@dataclass
class Generated:
    leaderboard: Leaderboard
    files: list[Path]
    markdown: str


def generate(preset: Optional[str] = None, ranking: str = "aggregate", out_dir: Optional[Path] = None,
             experiment: Optional[str] = None, source: Optional[str] = None, ground_truth: Optional[str] = None,
             split_hash: Optional[str] = None, data_hash: Optional[str] = None, run_filter: Optional[str] = None,
             n_boot: int = 2000, boot_seed: int = 0, log_to_mlflow: bool = True,
             from_export: Optional[Path] = None, export: bool = False,
             register_top: bool = False) -> list[Generated]:
    """Build, write (and log) one leaderboard per output name; refuse ambiguous groups.

    ``from_export``: read the runs from a run export (``benchmark.export``) instead of MLflow;
    nothing is logged then. ``export``: write ``<name>.runs/`` (the runs of each table) beside it,
    so the page can be recomputed, byte for byte, from the repository alone. ``register_top``: put
    each table's top model in the MLflow model registry (see ``register_top_model``)."""
    from .paths import home
    from .tracking import Tracker, client, load_settings
    if ranking not in RANKINGS:
        raise UsageError(f"unknown ranking {ranking!r} (choose from {', '.join(RANKINGS)})")
    if n_boot < 100:
        raise UsageError("--n-boot must be at least 100")
    if from_export is not None:
        if run_filter or experiment or export or register_top:
            raise UsageError("--from reads a run export: --filter, --experiment, --export and --register do not apply")
        runs, exp_name = records_from_export(Path(from_export), preset, source, ground_truth, split_hash, data_hash)
        log_to_mlflow, flt = False, ""
        if not runs:
            raise UsageError(f"the run export {from_export} holds no finished, test-evaluated runs for these filters")
    else:
        settings = load_settings()
        exp_name = experiment or settings.experiment
        cl = client(settings)
        exp = cl.get_experiment_by_name(exp_name)
        if exp is None:
            raise UsageError(f"no MLflow experiment {exp_name!r} in {settings.tracking_uri}; run `bench suite` first")
        flt = _mlflow_filter(preset, source, ground_truth, split_hash, data_hash, run_filter)
        runs = collect_runs(cl, [exp.experiment_id], flt)
        if not runs:
            what = f" for preset {preset!r}" if preset else ""
            raise UsageError(f"no finished, test-evaluated runs{what} in experiment {exp_name!r}; "
                             f"run `bench suite --preset {preset or 'cpu'}` first")
    by_name = group_runs(runs)
    mixed = {n: g for n, g in by_name.items() if len(g) > 1}
    if mixed:
        raise UsageError("\n".join(mixed_groups_message(n, g) for n, g in mixed.items()))
    out_dir = Path(out_dir) if out_dir else home() / "leaderboards"
    results = []
    for name, [(key, group)] in by_name.items():
        if all(r.reference for r in group):
            print(f"note: {name} has only reference runs", file=sys.stderr)
        lb = build_sections(key, group, ranking, n_boot, boot_seed)
        lb.experiment = exp_name
        lb.n_source_runs = len({x.run_id for r in _all_rows(lb) for x in r.runs})
        files = write_leaderboard(lb, out_dir)
        if export:
            from .export import export_runs
            ids = {x.run_id for r in _all_rows(lb) for x in r.runs}
            files.append(export_runs(cl, ids, out_dir / f"{lb.key.name}.runs", exp_name))
        results.append(Generated(lb, files, files[0].read_text(encoding="utf-8")))
        if register_top:
            register_top_model(lb)
    if log_to_mlflow:
        label = results[0].leaderboard.key.name if len(results) == 1 else "all"
        tracker = Tracker.start(f"leaderboard-{label}", {"kind": "leaderboard", "leaderboard.ranking": ranking},
                                experiment=exp_name)
        status = "FAILED"
        try:
            tracker.log_params({"ranking": ranking, "n_boot": n_boot, "boot_seed": boot_seed,
                                "filter": flt})
            for g in results:
                tracker.set_tags({f"leaderboard.{g.leaderboard.key.name}.runs":
                                  str(g.leaderboard.n_source_runs)})
                for f in g.files:
                    if f.is_file():     # not the run export folder: those runs are in this store already
                        tracker.log_artifact(f, "leaderboards")
            status = "FINISHED"
        finally:
            tracker.finish(status)
    return results


def register_top_model(lb: Leaderboard):
    """Register the top-ranked model of a table in the MLflow model registry, under the table's
    name (e.g. ``lidc-phantom-cpu``): of its seeds, the run with the best test Dice (the model a
    user would deploy); the version's description is the table's header and that row."""
    from .tracking import register_model
    top = next((r for r in lb.rows if not r.reference), None)
    if top is None:
        print(f"note: {lb.key.name} has no model row to register", file=sys.stderr)
        return None
    best = max(top.runs, key=lambda x: x.metrics.get("test_dice", float("-inf")))
    header, body = table_cells(lb)
    row = body[lb.rows.index(top)]
    description = (f"{title(lb)}: top row, seed {best.seed} (test Dice {best.metrics.get('test_dice', float('nan')):.4f})"
                   f"\n\n| {' | '.join(header)} |\n|{'|'.join('---' for _ in header)}|\n| {' | '.join(row)} |")
    version = register_model(best.run_id, lb.key.name, description)
    print(f"registered {top.label} (run {best.run_id}) as {lb.key.name} version {version.version}", file=sys.stderr)
    return version


def register(sub) -> None:
    p = sub.add_parser("leaderboard", help="write leaderboards/<dataset>-<preset>.{md,csv,html} from MLflow runs")
    p.add_argument("--preset", help="only runs of this preset (default: every preset found, one table each)")
    p.add_argument("--ranking", default="aggregate", choices=RANKINGS,
                   help="aggregate-then-rank (default) or rank-then-aggregate over test nodules")
    p.add_argument("--out", help="output folder (default: leaderboards/ in the project home)")
    p.add_argument("--experiment", help="MLflow experiment (default: mlflow.yaml's)")
    p.add_argument("--source", help="only this data source (phantom | dicom)")
    p.add_argument("--ground-truth", help="only this ground truth (staple | consensus)")
    p.add_argument("--split-hash", help="only runs on this split (tag data.split_hash)")
    p.add_argument("--data-hash", help="only runs on this crop data (a prefix of tag data.content_hash)")
    p.add_argument("--filter", dest="run_filter", help="extra MLflow filter string, e.g. \"tags.arch != 'x'\"")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--boot-seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-log", action="store_true", help="do not log the files to an MLflow run")
    p.add_argument("--export", action="store_true",
                   help="also write <name>.runs/: every run behind each table (params, tags, metric histories, "
                        "config, per-nodule CSV), so `--from` can recompute it without MLflow")
    p.add_argument("--register", action="store_true",
                   help="put each table's top model (its best seed) in the MLflow model registry, named after the table")
    p.add_argument("--from", dest="from_export", metavar="EXPORT",
                   help="recompute from a run export folder (e.g. leaderboards/lidc-phantom-cpu.runs) instead of MLflow")
    p.set_defaults(func=_cmd)


def _cmd(args) -> None:
    results = generate(preset=args.preset, ranking=args.ranking, out_dir=args.out, experiment=args.experiment,
                       source=args.source, ground_truth=args.ground_truth, split_hash=args.split_hash,
                       data_hash=args.data_hash, run_filter=args.run_filter, n_boot=args.n_boot,
                       boot_seed=args.boot_seed, log_to_mlflow=not args.no_log,
                       from_export=args.from_export, export=args.export, register_top=args.register)
    for g in results:
        print(g.markdown)
        print("wrote " + ", ".join(str(f) for f in g.files), file=sys.stderr)
