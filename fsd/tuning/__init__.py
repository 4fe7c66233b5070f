"""The search on Ray Tune and MLflow, in six rooms that import one way: a room imports only rooms on lower
floors, and its own (tests/test_core_imports.py). Only this package (and tune_main.py) imports Ray and MLflow.

- plan/ (floor 1): what a search is before anything runs, with no Ray and no MLflow: the spec, what a stage's
  trials share, its strategy and rungs, what trials are ranked by, the teacher's recipe and the majority floor,
  the ledger, stages shared across searches, folded grids, the winners and their evidence, the budget.
- tracking/ (floor 2): MLflow's records of a search, and the outbox that waits out a lost server.
- cost/ (floor 2): what a search will cost: counted in training samples, printed by `--dry-run`, timed by
  `--estimate`.
- search/ (floor 3): running the stages on Ray Tune, their confirmations and seed runs, the lock and the disk.
- results/ (floor 4): after a search: the stage table, `--compare`'s tables and tests, `--report`'s page.
- command/ (floor 4): the command line's flags parsed and every value checked before anything runs.

Each room's `__init__.py` names in `__all__` the modules another room (or tune_main.py) may import; the others
are the room's own (tests/test_core_imports.py checks it).
"""
