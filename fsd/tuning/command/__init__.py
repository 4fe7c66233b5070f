"""The command line.

Public: options (every flag declared once: the parser, the parsed record, the docs' table), flags (parsed into a
SearchSpec; contradicting flags), checks (every value, path, storage folder and service, before anything runs),
preview (what --dry-run and --estimate print), dispatch (what a checked command does: the search, --report,
--compare, Ctrl-C).

The room's own: inputs (data and models, through the core's checks), stored (the storage folder's files a
command reads back, checked whole), writable (a path the system refuses).
"""

__all__ = ["checks", "dispatch", "flags", "options", "preview"]
