"""Suite-wide pytest hooks and fixtures: the header names the free disk space where
``tmp_path`` lives, since a run writes checkpoints and exports there (a passing test's folder
is deleted when it ends, see ``tmp_path_retention_policy`` in setup.cfg), and
``module_tmp_dir`` gives a module's fixtures a folder deleted when the module is done."""

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

# Free space below which the header says that the run may not fit: the largest folders alive
# at once (a module's fixtures and one test's checkpoints) took 0.45 GB.
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


@pytest.fixture(scope="module")
def module_tmp_dir(tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """``module_tmp_dir(name)``: a new folder for this module's fixtures, deleted when the
    module's tests are done (tmp_path_factory's folders live until the whole run ends)."""
    made = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)
