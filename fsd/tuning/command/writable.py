"""Whether a folder or file can be created or written where the command line points, asked without writing.

The permission bits alone do not say it: root passes every `access` check on `/proc` and `/sys`, where the
kernel then refuses to create anything, and a name longer than the file system allows only fails at the
first `mkdir`. So the path is measured against the file system's limits, the file system of its nearest
existing folder is looked up (`/proc/self/mountinfo`: a pseudo file system, a read-only mount), and only then
are the permissions asked (`access`, which also refuses an immutable folder, root or not).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The kernel's views of itself: nothing can be created there, whatever `access` answers for root.
PSEUDO = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "tracefs", "securityfs", "configfs", "bpf",
          "pstore", "mqueue", "fusectl", "binfmt_misc", "efivarfs", "selinuxfs", "autofs", "nsfs"}


def too_long(path: Path) -> str | None:
    """Why `path` is too long for the file system of its nearest existing folder (a name or the whole), or None."""
    existing = nearest_existing(path)
    try:
        name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096  # Linux's limits
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            return f"the name {part[:20]}... is {len(os.fsencode(part))} bytes long, over the {name_max} its file " \
                   "system allows"
    if len(os.fsencode(str(path))) >= path_max:
        return f"the path is {len(os.fsencode(str(path)))} bytes long, over the {path_max - 1} the system allows"
    return None


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (a name too long to look up counts as absent)."""
    while True:
        try:
            if path.exists() or path == path.parent:
                return path
        except OSError:  # too long, or not searchable: go up
            pass
        path = path.parent


def cannot_create(path: Path) -> str | None:
    """Why `path` (absent) cannot be created, or None: too long, below a file, on a pseudo or read-only file
    system, or in a folder this process may not write."""
    reason = too_long(path)
    if reason:
        return reason
    parent = nearest_existing(path.parent)
    if not parent.is_dir():
        return f"{parent} is a file"
    return cannot_write(parent)


def cannot_write(folder: Path) -> str | None:
    """Why nothing can be created in the existing `folder`, or None."""
    kind, options = mount_of(folder)
    if kind in PSEUDO:
        return f"{folder} is on {kind}, a file system of the kernel's where no files can be created"
    if "ro" in options or _read_only(folder):
        return f"{folder} is on a read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def mount_of(folder: Path) -> tuple[str, set[str]]:
    """The file system type and mount options of the mount `folder` is on; ("", set()) when not known."""
    try:
        real = os.path.realpath(folder)
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return "", set()
    best, found = -1, ("", set())
    for line in lines:
        # `<id> <parent> <dev> <root> <mount point> <options> [optional fields] - <type> <source> <super options>`
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 6 or not tail.split():
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # the last of equal mount points is the one on top
            best, found = len(point), (tail.split()[0], set(fields[5].split(",")))
    return found
