"""Ctrl-C and SIGTERM never land half way through a checkpoint or an MLflow write
(``benchmark.core.interrupts``): they are held until the write ends, then raised."""
import os
import signal
import threading

import pytest
import torch

from benchmark.core.interrupts import Terminated, held, install_handlers, restore_handlers

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signals reach the main thread only")


@pytest.fixture
def bench_handlers():
    previous = install_handlers()
    yield
    restore_handlers(previous)


def test_a_signal_inside_held_is_raised_when_the_block_ends(bench_handlers):
    reached = []
    with pytest.raises(Terminated):
        with held():
            with held():                       # nested: only the outermost end raises
                os.kill(os.getpid(), signal.SIGTERM)
                reached.append("inner")
            reached.append("outer")
    assert reached == ["inner", "outer"]
    with pytest.raises(KeyboardInterrupt) as e:
        with held():
            os.kill(os.getpid(), signal.SIGINT)
    assert not isinstance(e.value, Terminated)
    with held():                               # nothing pending is left behind
        pass


def test_a_second_signal_is_raised_at_once(bench_handlers):
    """A held write that hangs can still be stopped: press Ctrl-C (or kill) again."""
    reached = []
    with pytest.raises(Terminated):
        with held():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("first held")
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("second held")
    assert reached == ["first held"]
    with held():
        pass


def test_sigterm_inside_torch_save_leaves_a_whole_checkpoint_and_then_terminates(bench_handlers, tmp_path,
                                                                              monkeypatch):
    """SIGTERM arriving while the checkpoint's bytes are written: raised there, the zip writer's
    cleanup turned it into a RuntimeError ("unexpected pos") and the run ended FAILED, not
    KILLED. Held, the checkpoint is written whole, loads, and Terminated follows."""
    from benchmark.core.checkpoint import load_checkpoint, save_checkpoint
    real_save = torch.save

    class KilledMidWrite:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, b):
            self.writes += 1
            if self.writes == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, KilledMidWrite(f)))
    path = tmp_path / "last.pt"
    state = {"epoch": 3, "config": {}, "model": {"w": torch.arange(50000, dtype=torch.float32)}}
    with pytest.raises(Terminated):
        save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_sigterm_inside_an_mlflow_call_lets_the_call_complete(bench_handlers, bench_home):
    """A run's status, params and metrics go through ``Tracker``: a kill arriving inside one of
    its calls waits for the call, so the store is never left with half of it (or with a run
    RUNNING whose process is gone: the status call itself is held too)."""
    from benchmark.core.tracking import Tracker, client, experiment_id, load_settings
    settings = load_settings()
    cl = client(settings)
    run_id = cl.create_run(experiment_id(cl, settings)).info.run_id

    class KilledMidCall:
        def __getattr__(self, name):
            def call(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGTERM)
                return getattr(cl, name)(*args, **kwargs)
            return call

    tracker = Tracker(KilledMidCall(), run_id, settings)
    with pytest.raises(Terminated):
        tracker.log_params({"train.epochs": 20})
    with pytest.raises(Terminated):
        tracker.finish("KILLED")
    run = cl.get_run(run_id)
    assert run.data.params == {"train.epochs": "20"} and run.info.status == "KILLED"
    assert not tracker.offline                 # logged to the store, not buffered
