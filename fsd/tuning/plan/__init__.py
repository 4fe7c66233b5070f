"""What a search is before anything runs (no Ray, no MLflow); every module is used by the rooms above.

spec (SearchSpec), stages (a stage's shared values, strategy, rungs, expected samples; the metric names),
ledger (typed stage records), shared (stages keyed by content, reused across searches), folding (grids
folded), winners (the carried winners, the search's best), evidence (the rule a stage names its winner by),
budget (--budget's plan), spend (what a search will spend, in training samples).
"""

__all__ = ["budget", "evidence", "folding", "ledger", "shared", "spec", "spend", "stages", "winners"]
