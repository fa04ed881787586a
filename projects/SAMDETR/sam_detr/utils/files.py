"""Files written by this project: the permissions they get (as ``open()`` would give them)."""

import os

__all__ = ["DIRECTORY_MODE", "FILE_MODE", "UMASK"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: setting it to read it is process-wide, a race with threads that create files.
UMASK = _read_umask()
# Permissions of written files and folders before the umask, as open() and os.makedirs give.
FILE_MODE = 0o666
DIRECTORY_MODE = 0o777
