"""Running stages on Ray: the one place trials run.

Public: runner (run_locked: a search under its folder's lock; run_search: the stages in order), seed_runs (a
configuration on a list of seeds), comparison (--compare's runs: each method's winner on seeds, under the
comparison folder's lock), fresh (the search's best on fresh seeds), services (Ray and MLflow started, an
experiment opened or restored, Ctrl-C), lock (one search per folder), disk (space before and when it fills),
unreported (checkpoint folders Ray never took).

The room's own: stage (one stage), confirm (its leading points on more seeds), halving (grid, ASHA, Optuna,
the budget gate), no_repeats, trainable (one trial), retention (what a stage keeps on disk), stage_progress
(the trial lines), orphans (what a killed driver left running).
"""

__all__ = ["comparison", "disk", "fresh", "lock", "runner", "seed_runs", "services", "unreported"]
