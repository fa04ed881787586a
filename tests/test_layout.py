"""The package layout keeps its rules: the import contracts of setup.cfg hold (and a crafted
violation fails them, naming the import), no module is over 300 lines, the config's choice
tuples are exactly the values the model maps to classes, and the README's "Code layout"
table names every folder of the package."""

import re
import shutil
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest
from sam_detr import config
from sam_detr.modeling import autocast, decoder, roi_align

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_PARENT = REPO_ROOT / "projects" / "SAMDETR"
PACKAGE = PACKAGE_PARENT / "sam_detr"
MAX_MODULE_LINES = 300
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path, config_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config_file)],
        cwd=package_parent,
        env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_hold():
    result = lint_imports(PACKAGE_PARENT, REPO_ROOT / "setup.cfg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_a_model_module_importing_the_engine_breaks_a_contract(tmp_path):
    copy = tmp_path / "sam_detr"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    mlp = copy / "modeling" / "mlp.py"
    mlp.write_text(mlp.read_text() + "\nfrom ..engine import solver  # noqa\n")
    result = lint_imports(tmp_path, REPO_ROOT / "setup.cfg")
    assert result.returncode != 0
    assert "sam_detr.modeling.mlp -> sam_detr.engine.solver" in result.stdout
    assert "modeling imports nothing from engine, checkpoint, data or deploy BROKEN" in (
        result.stdout
    )


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_is_over_the_size_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO_ROOT)}: {lines} lines"


def test_config_choices_are_what_the_model_maps_to_classes():
    assert set(roi_align.ROI_ALIGN_IMPLEMENTATIONS) == set(config.ROI_ALIGN_CHOICES)
    assert set(autocast.AMP_SCOPES) == set(config.AMP_SCOPE_CHOICES)
    assert {config.AMP_AUTO, *autocast.DTYPES} == set(config.AMP_DTYPE_CHOICES)
    # Every combination the config accepts has a Semantics Aligner; pooling has no search range.
    accepted = {
        (resampling, search)
        for resampling, search in product(
            config.QUERY_RESAMPLING_CHOICES, config.SEARCH_RANGE_CHOICES
        )
        if resampling == "salient_points" or search == config.ABLATION_DEFAULTS["SEARCH_RANGE"]
    }
    assert set(decoder.SEMANTICS_ALIGNERS) == accepted


def test_readme_code_layout_names_every_folder():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`sam_detr/(\w+)/`", section))
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert named == folders
