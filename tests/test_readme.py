"""The README and the docs pages say what the project is, and their commands run as written:
every ``tools/`` script and config file that their shell blocks name exists, every named tool
answers ``--help``, every relative link points to a file (and heading) that exists, every docs
page is linked from the README, every file of ``tools/`` is in the README's tools index, the
README stays short, and no page tells how the project was developed."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [README] + DOCS
TOOLS_DIR = REPO_ROOT / "tools"
MAX_README_LINES = 260

SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)[ \t]*\n(.*?)^```", re.M | re.S)
# A tools/ script or a config file named in a command (not as part of a longer path).
NAMED_PATH = re.compile(r"(?<![\w./-])((?:tools/[\w.-]+\.(?:py|sh))|(?:configs/[\w./-]+\.yaml))")
# [text](target): relative targets only; external ones are not checked here.
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)

# Phrases that tell the project's history (which day or run something changed, what was tried),
# which belongs in git history, not in pages that describe the project as it is.
HISTORY_PHRASES = [
    r"\bsession",
    r"\bpreviously\b",
    r"\buntil 20\d\d",
    r"\bsince 20\d\d",
    r"earlier notes",
    r"\bwas tried\b",
    r"\btried and\b",
    r"\bnot kept\b",
    r"\bno longer\b",
    r"\bprevious demo\b",
    r"\bprevious config",
    r"before this change",
    r"\bat the time\b",
    r"\bthe code of 20\d\d",
    r"\bwent from\b",
    r"\buntil (?:then|now)\b",
    r"\bissue \d+",
]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def shell_blocks(page: Path) -> List[str]:
    return SHELL_BLOCK.findall(page.read_text())


def named_paths(page: Path) -> Set[str]:
    return {m for block in shell_blocks(page) for m in NAMED_PATH.findall(block)}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in HEADING.findall(text)}


def relative_links(page: Path) -> List[str]:
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_pages_exist():
    assert README.is_file() and DOCS, "README.md and docs/*.md"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_tools_and_configs_exist(page):
    missing = sorted(p for p in named_paths(page) if not (REPO_ROOT / p).is_file())
    assert not missing, f"{_rel(page)} names files that do not exist: {missing}"


# Runs every tool with --help in one Python process (PyTorch and Detectron2 imported once), as
# ``python tools/<script> --help`` would: as __main__, with its folder first on sys.path. A
# subprocess keeps the tools' logging and warning settings out of the test process.
HELP_DRIVER = r"""
import contextlib, io, json, os, runpy, sys
results = {}
base_path = list(sys.path)
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    sys.path[:] = [os.path.dirname(path)] + base_path
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(path, run_name="__main__")
        code = "returned without exiting"
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    except BaseException as e:  # noqa: B036 - report any failure of the tool's import or parser
        code = repr(e)
    results[path] = {"code": code if isinstance(code, int) else str(code), "output": out.getvalue()}
sys.stdout.write("\nHELP-RESULTS " + json.dumps(results) + "\n")
"""


# A path of the repository named anywhere on a page (``sam_detr/...`` is the package's).
REPO_PATH = re.compile(r"(?<![\w./-])((?:tools|configs|tests|projects|sam_detr)/[\w./-]*\w/?)")
MODULE = re.compile(r"\bsam_detr(?:\.\w+)+")
PACKAGE_PARENT = REPO_ROOT / "projects" / "SAMDETR"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_paths_and_modules_exist(page):
    text = page.read_text()
    missing = []
    for path in set(REPO_PATH.findall(text)):
        root = PACKAGE_PARENT if path.startswith("sam_detr/") else REPO_ROOT
        if not (root / path).exists():
            missing.append(path)
    for dotted in set(MODULE.findall(text)):
        parts = dotted.split(".")
        base = PACKAGE_PARENT
        while parts and ((base / parts[0]).is_dir() or (base / f"{parts[0]}.py").is_file()):
            base = base / parts.pop(0)
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base
        if source.is_dir() or len(parts) > 1:
            ok = not parts
        else:
            ok = not parts or re.search(
                rf"^(?:def|class)\s+{parts[0]}\b|^{parts[0]}\s*[:=]", source.read_text(), re.M
            )
        if not ok:
            missing.append(dotted)
    assert not missing, f"{_rel(page)} names paths or modules that do not exist: {sorted(missing)}"


def test_named_tools_answer_help():
    named = set().union(*(named_paths(page) for page in PAGES))
    tools = sorted(p for p in named if p.startswith("tools/") and p.endswith(".py"))
    tools = [str(REPO_ROOT / t) for t in tools if (REPO_ROOT / t).is_file()]
    assert tools, "the README's shell blocks name tools"
    proc = subprocess.run(
        [sys.executable, "-c", HELP_DRIVER, *tools],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    marker = proc.stdout.rfind("HELP-RESULTS ")
    assert marker >= 0, f"the --help driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results: Dict[str, Dict] = json.loads(proc.stdout[marker + len("HELP-RESULTS ") :])
    failed = {
        _rel(Path(path)): (r["code"], r["output"][-800:])
        for path, r in results.items()
        if r["code"] != 0 or "usage:" not in r["output"]
    }
    assert not failed, f"tools that do not answer --help: {failed}"


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{_rel(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{_rel(page)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    targets = {t.partition("#")[0] for t in relative_links(README)}
    unlinked = [_rel(p) for p in DOCS if _rel(p) not in targets]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_tools_index_names_every_tool():
    readme = README.read_text()
    assert "\n## Tools\n" in readme
    index = readme.split("\n## Tools\n", 1)[1].split("\n## ", 1)[0]
    tools = sorted(
        p.name for p in TOOLS_DIR.iterdir() if p.is_file() and p.suffix in (".py", ".sh")
    )
    missing = [t for t in tools if f"`tools/{t}`" not in index]
    assert not missing, f"tools missing from the README's tools index: {missing}"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_history(page):
    text = page.read_text()
    found = [
        f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
        for phrase in HISTORY_PHRASES
        for m in re.finditer(phrase, text, re.I)
    ]
    assert not found, f"{_rel(page)} tells the project's history: {found}"
