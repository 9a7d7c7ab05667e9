"""``bench protocol``: the declared, tuned benchmark protocol, restartable.

    bench protocol run protocols/cpu.yaml [--experiment NAME] [--no-progress] [--scheduler ADDRESS] [--hours H]
    bench protocol status protocols/cpu.yaml
    bench protocol export protocols/cpu.yaml [--out DIR]    # carry its progress to another machine

A protocol is a versioned YAML file in ``protocols/`` (validated by :class:`Protocol`). Running it
does, in this order, skipping whatever the tracking store and the Optuna journal already hold:

  1. **tuning**: per architecture one Optuna study on the validation split, with the same budget
     for every architecture (trials, epochs per trial, pruner, sampler and its seed), over the
     shared optimiser space (``benchmark.campaigns.search_space.common_space``) plus the architecture's own
     ``search_space``; the loss (``tuning.loss``) stays at its defaults. The study is named
     ``<protocol>-v<version>-<arch>``, so a new protocol version never reuses an old study;
  2. **final**: right after its study holds ``n_trials`` finished trials, the best trial's exact
     configuration (``benchmark.campaigns.search_space.replay_overrides``) trains ``final.seeds`` seeds with the
     preset's epoch budget and is evaluated on the test split;
  3. **defaults**: the same architectures at the preset's default settings for ``defaults.seeds``
     seeds (``bench suite`` cells, with the reference runs): the leaderboard's second section and
     the baseline of each architecture's gain from tuning. Run in this process, each
     architecture's default runs follow its final runs (the references come with the first);
  4. **loss study**: on each of ``loss_study.archs`` (``best`` = the tuned architecture with the
     highest best-trial validation Dice; the test split plays no part in that choice; when the
     best is an architecture already listed, the runner-up takes its place; with
     ``best_max_hours``, only architectures whose loss study fits that estimate qualify) every listed loss x
     ``loss_study.seeds`` seeds with that architecture's tuned settings. Its ``dice_bce`` cells
     are the final runs themselves (same fingerprint), so they are not trained again. Run in
     this process, a named architecture's loss cells follow its default runs, and ``best``'s
     follow the default runs of the last candidate for it (an architecture over ``best_max_hours``
     cannot be chosen, so its study does not hold the choice up).

Protocol v7's parts (each optional; a file without them runs as v6 did):

  * ``budget.samples_per_epoch``: every trial and run trains that many patches per epoch
    (``train.samples_per_epoch``), so a tuned batch changes the steps, not the data seen;
  * ``tuning.schedule: full`` with ``pruner: successive_halving``: trials train the finals'
    schedule and the pruner stops the weak ones; ``first_trial: default_recipe`` enqueues the
    architecture's whole default recipe, never pruned;
  * ``tuning.rescore``: the top trials retrain on new seeds, validation only (``rescore``), and
    the best mean is what the finals train;
  * after every study is chosen (``controls``): ``tuning.second_sampler`` (the top three and the
    comparator tuned again with another sampler seed, study ``<name>-s<seed>``, with finals),
    ``recipe_control.shared`` (every architecture with the best shared-space recipe) and
    ``recipe_control.swap_top`` (the top architectures with each other's recipes);
  * ``status`` adds the planned hours of every part per architecture (``estimate``).

Restartable like ``bench suite`` (whose cell machinery runs stages 2-4): stop at any point and
rerun the command. A study resumes until it holds its trials (a trial whose process died is
marked failed and replaced); a finished cell is skipped by its config fingerprint; an
interrupted cell resumes from its last checkpoint.

On a Dask cluster (``--scheduler``, see ``benchmark.campaigns.cluster``) the unfinished studies run side by
side, one task each, and then the cells of stages 2-4 are submitted as ``bench suite --scheduler``
submits its cells; the same store, journal and rules, so either way of running resumes the other.

On a machine lent for a fixed time (a batch job's wall time, a session that ends every
process), ``--hours H`` starts no trial or cell that would not end within H hours of the start,
by this machine's measured speed or else the protocol's ``seconds_per_epoch`` (``TimeLimit``),
and stops there: a run cut off at the end would be lost
with the machine, or begun again from its last checkpoint. With ``--wait`` (``run_protocol_waiting``)
a process that finds what is left held by another process on the host looks again every few
minutes within its hours, instead of ending.

A protocol outlives the machine it started on: ``bench protocol export`` writes what it has
finished (its scored runs and its studies' finished trials) as a run export, ``bench import`` of
that folder elsewhere recreates them, and ``bench protocol run`` there resumes as it would here.

Every run the protocol starts carries the tags ``protocol.name``, ``protocol.version``,
``protocol.sha`` (of the file's bytes) and ``protocol.part`` (final / default / loss; tuning
trials are children of their study's parent run, which carries the same tags), and logs the
protocol file as the artifact ``protocol/<file name>``.

The package's modules: ``spec`` (the file's schema and loading), ``plan`` (studies and the cells
they lead to), ``budget`` (costs, measured speed, the ``--hours`` limit), ``rescore`` and ``controls`` (v7's
rescoring, second sampler and recipe controls), ``estimate`` (planned hours by part), ``runner``
(running it), ``status`` (with ``status_v7``) and ``export``; the command line is ``benchmark.cli.protocol``.
"""
from benchmark.campaigns.protocol.export import ProtocolExport, export_protocol
from benchmark.campaigns.protocol.runner import ProtocolResult, run_protocol
from benchmark.campaigns.protocol.spec import LoadedProtocol, Protocol, load_protocol
from benchmark.campaigns.protocol.status import protocol_status

__all__ = ["Protocol", "LoadedProtocol", "load_protocol", "run_protocol", "ProtocolResult", "protocol_status",
           "export_protocol", "ProtocolExport"]
