"""The selected network as an MLflow model: logged once per run, loaded, registered."""
from __future__ import annotations

import logging
import sys

from benchmark import __version__
from benchmark.core.errors import UsageError
from benchmark.core.tracking.settings import client
from benchmark.core.tracking.tracker import Tracker
from benchmark.core.tracking.settings import TrackingSettings
from benchmark.core.tracking.conventions import MODEL_ARTIFACT, _temporary_env


def logged_model_uri(tracker: "Tracker") -> str | None:
    """The URI of the MLflow model this run already logged, or None. The publish step calls it
    (``log_pytorch_model`` does) so that a run killed after logging its model and then resumed
    does not log a second one and orphan the first. Besides the ``model_uri`` tag it finds a
    finished model whose tag was never written (a kill between the two), and writes the tag."""
    try:
        run = tracker.client.get_run(tracker.run_id)
        if run.data.tags.get("model_uri"):
            return run.data.tags["model_uri"]
        models = tracker.client.search_logged_models([run.info.experiment_id],
                                                     filter_string=f"source_run_id = '{tracker.run_id}'")
    except Exception:  # noqa: BLE001 - no answer: log_model decides (and reports) as before
        return None
    ready = [m for m in models if m.name == MODEL_ARTIFACT and str(m.status).endswith("READY")]
    if not ready:
        return None
    model_id = max(ready, key=lambda m: m.creation_timestamp).model_id
    tracker.set_tags({"model_uri": f"models:/{model_id}", "model_id": model_id})
    return f"models:/{model_id}"


def log_pytorch_model(tracker: "Tracker", model, input_example, metadata: dict | None = None) -> str | None:
    """Log ``model`` as the run's MLflow PyTorch model; returns its URI (``models:/<model_id>``,
    also in the run's ``model_uri`` tag).

    The flavour pickles the whole module (class references into ``architectures``), so
    ``mlflow.pytorch.load_model`` needs lidc-bench importable and must only be used on runs you
    trust: unpickling executes code. Our own checkpoints stay ``weights_only`` state dicts.
    ``input_example``: one normalised patch (1, 1, Z, Y, X) float32, logged as the example. The
    signature leaves the batch and spatial sizes free (-1): a network takes other patch sizes than
    the one it was trained on; the logged module is wrapped in ``SpatialSizeCheck``, which refuses,
    in one line, a size that is not a multiple of what the network needs.
    """
    import copy

    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from benchmark.core.model_wrapper import SpatialSizeCheck, required_multiple
    already = logged_model_uri(tracker)
    if already:
        return already          # a resumed run evaluated again: its model is logged once
    bare = copy.deepcopy(model).cpu().eval()
    cpu_model = SpatialSizeCheck(bare, required_multiple(bare)).eval()
    example = np.ascontiguousarray(input_example, dtype=np.float32)
    with torch.no_grad():
        out = cpu_model(torch.from_numpy(example))
        out = out[0] if isinstance(out, (list, tuple)) else out
    free = (-1, example.shape[1], -1, -1, -1)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), free)]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out.shape[1], -1, -1, -1))]))
    # MLflow warns about pickle on every call; the trade-off is documented here and in docs/tracking.md
    flavour_log = logging.getLogger("mlflow.pytorch")
    level = flavour_log.level
    flavour_log.setLevel(logging.ERROR)
    # MLflow 3 files a LoggedModel under the fluent API's experiment, not its source run's: with
    # none set that is experiment 0, whose artifacts go to ./mlruns of whatever folder the
    # process started in, outside the project's store. The run's own experiment keeps it there.
    try:
        run = tracker.client.get_run(tracker.run_id)
        # The LoggedModel is created here, with the run as its source and the run's params, as
        # log_model(run_id=...) would; given the model id, log_model skips its own linking, which
        # read the whole history of each of the run's ~180 metrics, one query each, to find the
        # step-0 values (about a third of a smoke run's time past training). ``_link_to_run``
        # links the same values in one call.
        logged = mlflow.initialize_logged_model(
            name=MODEL_ARTIFACT, source_run_id=tracker.run_id, experiment_id=run.info.experiment_id,
            params={k: str(v) for k, v in run.data.params.items()})
        with _temporary_env("MLFLOW_EXPERIMENT_ID", run.info.experiment_id):
            info = mlflow.pytorch.log_model(
                cpu_model, name=MODEL_ARTIFACT, model_id=logged.model_id, signature=signature,
                input_example=example, metadata=metadata or {},
                # the flavour's default in MLflow 3.17 is torch.export ("pt2"): it returned a graph
                # with the batch size fixed to the example's (seen on unet3d), and export cannot
                # trace every model; pickle keeps the module as trained
                serialization_format="pickle",
                # listed, not inferred: inference loads the model in a subprocess (slow) and would
                # list every package of the environment
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={_version('mlflow')}",
                                  f"lidc-bench=={__version__}"])
    except Exception as e:  # noqa: BLE001 - the checkpoint is logged as well; the run stays valid
        print(f"warning: could not log the MLflow model ({type(e).__name__}: {str(e)[:160]}); "
              f"the weights are in the run's checkpoints/best.pt", file=sys.stderr)
        return None
    finally:
        flavour_log.setLevel(level)
    # MLflow 3 stores a model as a LoggedModel of its own (``models:/<model_id>``); that URI is
    # what load_model and the registry resolve reliably
    model_id = getattr(info, "model_id", None) or logged.model_id
    try:
        _link_to_run(tracker.client, run, model_id)
    except Exception as e:  # noqa: BLE001 - the model is saved and loads; only the UI's cross-links are missing
        print(f"warning: the MLflow model {model_id} is saved but could not be linked to run {tracker.run_id} "
              f"({type(e).__name__}: {str(e)[:160]})", file=sys.stderr)
    uri = f"models:/{model_id}"
    tracker.set_tags({"model_uri": uri, "model_id": model_id})
    return uri


def _link_to_run(cl, run, model_id: str) -> None:
    """What ``log_model(run_id=...)`` does after saving: the model becomes an output of the run
    (the run page lists it), and the run's step-0 metrics (the test metrics, the cost) are
    logged again with the model's id (the model page shows them). ``run``: fetched after the
    metrics were logged; its latest values are the step-0 values for metrics logged once."""
    from mlflow.entities import LoggedModelOutput, Metric
    cl.log_outputs(run.info.run_id, [LoggedModelOutput(model_id, step=0)])
    # RunData keeps the Metric objects (step, timestamp) behind its ``metrics`` dict of values
    latest = getattr(run.data, "_metric_objs", None)
    if latest is None:      # another MLflow: the one slow path that knows the steps
        latest = [m for key in run.data.metrics for m in cl.get_metric_history(run.info.run_id, key)]
    linked = [Metric(m.key, m.value, m.timestamp, m.step, dataset_name=getattr(m, "dataset_name", None),
                     dataset_digest=getattr(m, "dataset_digest", None), run_id=run.info.run_id, model_id=model_id)
              for m in latest if m.step == 0 and getattr(m, "model_id", None) is None]
    for i in range(0, len(linked), 1000):       # MLflow's limit per batch
        cl.log_batch(run.info.run_id, metrics=linked[i:i + 1000])


def load_pytorch_model(uri: str):
    """The PyTorch model behind an MLflow model URI, on the CPU, and its metadata dict.
    Unpickles the module (see ``log_pytorch_model``): only for models you trust."""
    import mlflow.pytorch
    from mlflow.models import get_model_info
    meta = get_model_info(uri).metadata or {}
    return mlflow.pytorch.load_model(uri, map_location="cpu"), meta


def _version(pkg: str) -> str:
    from importlib.metadata import version
    return version(pkg)


def register_model(run_id: str, name: str, description: str | None = None,
                   settings: TrackingSettings | None = None, force: bool = False):
    """Register a finished run's MLflow model under ``name`` in the model registry; the
    description (e.g. its leaderboard row) goes on the new version. Returns the ModelVersion.
    A run already registered under ``name`` is not registered again unless ``force``: a
    warning names its version, which is returned."""
    import re
    from mlflow.exceptions import MlflowException
    if not re.fullmatch(r"[0-9a-f]{32}", run_id or ""):
        raise UsageError(f"{run_id!r} is not a run id (32 hex digits)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name or ""):
        raise UsageError(f"model name {name!r}: use letters, digits, '.', '_' and '-'")
    cl = client(settings)
    try:
        run = cl.get_run(run_id)
    except MlflowException:
        raise UsageError(f"no MLflow run {run_id!r} in {cl.tracking_uri}") from None
    if run.info.status != "FINISHED":
        raise UsageError(f"run {run_id} is {run.info.status}, not FINISHED: register finished runs only")
    if "model_uri" not in run.data.tags:
        raise UsageError(f"run {run_id} has no MLflow model (runs from before models were logged: "
                         f"re-run it, or use its checkpoints/best.pt)")
    existing = None if force else registered_version(cl, name, run_id)
    if existing is not None:
        print(f"warning: run {run_id} is already {name} version {existing.version}; no duplicate version was made "
              f"(--force makes one)", file=sys.stderr)
        return existing
    try:
        cl.get_registered_model(name)
    except MlflowException:
        cl.create_registered_model(name, tags={"project": "lidc-bench"},
                                   description="lidc-bench models; each version's description is its leaderboard row")
    model_id = run.data.tags.get("model_id") or None
    source = f"models:/{model_id}" if model_id else run.data.tags["model_uri"]
    version = cl.create_model_version(name, source, run_id=run_id, description=description,
                                      tags={k: run.data.tags[k] for k in ("arch", "loss", "preset", "seed")
                                            if k in run.data.tags},
                                      model_id=model_id)
    return version


def registered_version(cl, name: str, run_id: str):
    """The newest version of registered model ``name`` made from ``run_id``, or None
    (``name`` and ``run_id`` are validated by the caller: they go into a filter string)."""
    from mlflow.exceptions import MlflowException
    try:
        versions = cl.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version), default=None)
