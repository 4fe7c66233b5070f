"""MLflow: records (runs, the trial callback, the registered students) and outbox (writes that wait out an
outage)."""

__all__ = ["outbox", "records"]
