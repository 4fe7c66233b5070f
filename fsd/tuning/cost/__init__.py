"""Before a search: dryrun (--dry-run's table) and estimate (--estimate's timed steps, and what --budget 8h is
worth)."""

__all__ = ["dryrun", "estimate"]
