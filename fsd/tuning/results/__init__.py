"""After a search: what ran, read (nothing here runs a trial).

Public: summary (the stage table, its evidence, the fresh-seed test), compare (--compare's Table 2/3 and the
paper's tables), report (--report's page).

The room's own: tables (Tables 4-8's rows), significance (the comparison's tests), html (the page's HTML).
"""

__all__ = ["compare", "report", "summary"]
