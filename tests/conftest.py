"""Suite-wide pytest hooks: the header names the free disk space where ``tmp_path`` lives, since
a run writes checkpoints and exports there (a passing test's folder is deleted when it ends,
see ``tmp_path_retention_policy`` in setup.cfg)."""

import shutil
import tempfile

# Free space below which the header says that the run may not fit: the largest folders alive
# at once (a module's fixtures and one test's converted R50 checkpoint) take ~0.5 GB.
LOW_DISK_BYTES = 1 << 30


def pytest_report_header(config) -> str:
    # The parent of basetemp without creating it (as TempPathFactory would).
    given = config.option.basetemp
    where = str(given) if given else tempfile.gettempdir()
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return f"tmp_path under {where}: free space unknown"
    note = (
        " (LOW: tests that write checkpoints may fail with ENOSPC)" if free < LOW_DISK_BYTES else ""
    )
    return f"tmp_path under {where}: {free / 2**30:.1f} GiB free{note}"
