"""What a search will cost, before it runs: count (the cost counted in training samples, per stage and in total,
and --budget's plan over it), dryrun (--dry-run's table of it) and estimate (--estimate's timed steps, and what
--budget 8h is worth)."""

__all__ = ["count", "dryrun", "estimate"]
