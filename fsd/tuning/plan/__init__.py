"""What a search is before anything runs (no Ray, no MLflow); every module is used by the rooms above.

spec (SearchSpec), trials (what every trial of a stage shares: the data values, the stage's base config, its
rows), strategy (how a stage's grid is searched, its trials and seeds), rungs (halving's arithmetic: rungs,
evaluations, expected samples), ranking (what trials are ranked by and on), references (the teacher's recipe,
the majority-class floor), ledger (typed stage records), resume (whether a search folder can take a search:
a ledger to resume or none), shared (stages keyed by content, reused across searches), folding (grids
folded), winners (the carried winners, the search's best), evidence (the rule a stage names its winner by),
budget (--budget's plan).
"""

__all__ = ["budget", "evidence", "folding", "ledger", "ranking", "references", "resume", "rungs", "shared", "spec",
           "strategy", "trials", "winners"]
