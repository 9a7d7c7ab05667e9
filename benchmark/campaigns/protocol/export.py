"""``bench protocol export``: the protocol's progress (its finished runs and its studies'
finished trials) written as a run export, to be imported and resumed on another machine."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmark.campaigns.protocol.spec import LoadedProtocol, load_protocol
from benchmark.campaigns.protocol.status import finished_protocol_runs

#: the runs an export carries (tuning trials travel inside their study documents)
EXPORTED_PARTS = ("final", "default", "loss", "reference", "rescore", "shared", "swap")
#: the trials it carries: a RUNNING or WAITING trial belongs to a process on this machine, and
#: the protocol there enqueues or runs it again
FINISHED_TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL")


def default_export_path(lp: LoadedProtocol) -> Path:
    return lp.path.parent / "progress" / f"{lp.spec.name}-v{lp.spec.version}.runs"


@dataclass
class ProtocolExport:
    path: Path
    runs: int
    trials: dict          # study name -> finished trials exported


def export_protocol(path: str | Path, out: Optional[str | Path] = None, experiment: Optional[str] = None,
                    storage: Optional[str] = None) -> ProtocolExport:
    """Write what the protocol has finished so far as a run export (``benchmark.results.run_export``): every
    finished final, default, loss-study and reference run it started (tags ``protocol.name`` and
    ``protocol.version``), and each of its studies with its finished trials.

    ``bench import`` of the folder into another store and journal (a fresh clone, another
    machine) gives ``bench protocol run`` there the state to resume from: its cells are matched
    by their config fingerprints, which the runs carry as tags, and each study continues from its
    trials. Left behind: checkpoints, the trials' own MLflow runs, and whatever is still running
    (it is trained again there)."""
    import optuna
    from benchmark.results.run_export import export_runs
    from benchmark.results.study_export import export_studies
    from benchmark.core.tracking import client, load_settings
    from benchmark.core.optuna_storage import open_storage
    lp = load_protocol(path)
    s = lp.spec
    settings = load_settings()
    cl = client(settings)
    runs = [r.info.run_id for r in finished_protocol_runs(lp, experiment)
            if r.data.tags.get("protocol.part") in EXPORTED_PARTS]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    present = set(optuna.get_all_study_names(open_storage(storage)[0]))
    # each architecture's study and its second-sampler study (``-s<seed>``), where they exist
    offset = s.tuning.second_sampler.seed if s.tuning.second_sampler else 0
    names = [lp.study_name(a, o) for a in s.architectures for o in dict.fromkeys((0, offset))]
    studies = export_studies([n for n in names if n in present], storage)
    for doc in studies:
        kept = [t for t in doc["trials"] if t["state"] in FINISHED_TRIAL_STATES]
        # numbered as the importing storage will number them (a running trial left out is a gap)
        doc["trials"] = [{**t, "number": i} for i, t in enumerate(kept)]
    dest = Path(out) if out else default_export_path(lp)
    export_runs(cl, runs, dest, experiment or settings.experiment, studies)
    return ProtocolExport(dest, len(set(runs)), {d["study_name"]: len(d["trials"]) for d in studies})

