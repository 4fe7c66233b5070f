"""The paper's search schedules, one module per method, as data (see `base.get_schedule`)."""

from search_spaces.base import Budget, Derived, Schedule, Stage, format_schedule, get_schedule

__all__ = ["Budget", "Derived", "Schedule", "Stage", "format_schedule", "get_schedule"]
