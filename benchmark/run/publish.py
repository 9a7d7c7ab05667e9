"""Publishing a finished run's model: the last step of the run pipeline, after evaluation.

What is published is the selected model (the best validation epoch's weights, already loaded
into the model the run trained and evaluated):

* its checkpoint, as the run's artifact ``checkpoints/best.pt`` (the copy that is kept: a
  finished run is never resumed, so the local checkpoints are then released);
* an MLflow PyTorch model (``mlflow.pytorch.load_model(<the run's model_uri tag>)``, the model
  registry, ``bench predict``), its input example a real test patch and its metadata what a user
  needs to feed it.

Evaluation (:mod:`benchmark.run.evaluate`) only computes and logs metrics and predictions.
"""
from __future__ import annotations

from pathlib import Path

from benchmark.core.checkpoint import remove_checkpoint
from benchmark.core.tracking import Tracker
from benchmark.run.config import RunConfig


def publish_run(model, store, cfg: RunConfig, tracker: Tracker, ckpt_dir: Path) -> None:
    """Log the run's checkpoint and MLflow model, then free the disk its checkpoints held."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / "best.pt").exists():
        tracker.log_artifact(ckpt_dir / "best.pt", "checkpoints")
    example = input_example(store, cfg)
    if example is not None:
        from benchmark.core.tracking import log_pytorch_model
        log_pytorch_model(tracker, model, example, metadata=model_metadata(cfg))
    release_finished_checkpoints(tracker, ckpt_dir)


def input_example(store, cfg: RunConfig):
    """The first test nodule's centre window as the model sees it, (1, 1, Z, Y, X); None when
    the test split is empty."""
    from benchmark.data.loader import center_batches
    rows = store.indices("test")
    if len(rows) == 0:
        return None
    _, image, _ = next(iter(center_batches(store, rows[:1], 1, cfg.data.patch_zyx)))
    return image.numpy()


def model_metadata(cfg: RunConfig) -> dict:
    """What a user of the logged model needs to feed it: the input grid and intensity mapping."""
    z, y, x = cfg.data.patch_zyx
    return {"arch": cfg.model.arch, "spacing_mm": cfg.data.spacing_mm, "patch_zyx": [z, y, x],
            "crop_zyx": list(cfg.data.crop_zyx), "hu_window": list(cfg.data.hu_window),
            "threshold": cfg.eval.threshold,
            "input": "CT resampled to spacing_mm isotropic, HU clipped to hu_window and mapped to [0, 1], "
                     "tensor (B, 1, Z, Y, X); output: logits, sigmoid > threshold is the nodule"}


def release_finished_checkpoints(tracker: Tracker, ckpt_dir: Path) -> None:
    """Disk: a finished, published run is never resumed, so ``last.pt`` goes; ``best.pt`` was
    just logged to MLflow as the artifact ``checkpoints/best.pt`` (the copy that is kept), so
    the local one goes too unless logging fell back to the offline buffer, whose replay needs it."""
    remove_checkpoint(ckpt_dir / "last.pt")
    if not tracker.offline:
        remove_checkpoint(ckpt_dir / "best.pt")
