#!/usr/bin/env python
"""Install Detectron2 into the running interpreter's environment, which PyPI does not publish.

Three ways, tried in order, each logged with the reason it was taken or skipped:
(a) Detectron2 is already importable (trainer, data, evaluation, modeling, checkpoint): keep it;
(b) upstream ``pip install 'git+https://github.com/facebookresearch/detectron2.git'``, what a
user with internet gets, with its compiled ops; a quick ``git ls-remote`` probe with a short
timeout skips it at once where github.com cannot be reached; (c) the fallback: the PyPI sdist
``pb1-detectron2==0.6``, a redistribution of Detectron2 v0.6's Python sources without its C++
sources. It is downloaded into a git-ignored cache, checked against its sha256, unpacked and
patched there, then built without the extension. The patches live only here: ``Image.LINEAR``
(removed in Pillow 10) becomes ``Image.BILINEAR``; the extension list becomes empty; and a
placeholder ``detectron2/_C.py`` is written whose ops raise a clear error naming the op only
when one is called (SAM-DETR needs none: RoIAlign and NMS come from torchvision). Detectron2's
declared requirements (``black==21.4b2``, tensorboard, ...) conflict or are unneeded, so it is
installed with ``--no-deps`` and its runtime dependencies are installed here, under the given
pip constraints so that torch and torchvision are never replaced. Re-running is idempotent.
"""

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Sequence

logger = logging.getLogger("install_detectron2")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / "build" / "detectron2"

UPSTREAM_URL = "https://github.com/facebookresearch/detectron2.git"
UPSTREAM_REQUIREMENT = f"git+{UPSTREAM_URL}"
# Seconds the reachability probe of github.com may take before path (b) is skipped.
GIT_PROBE_TIMEOUT_S = 20
# pip's per-connection timeout (seconds) for path (b); no retries, so that it fails fast.
PIP_TIMEOUT_S = 15
# A git transfer slower than GIT_LOW_SPEED_BYTES_S for GIT_LOW_SPEED_TIME_S seconds is aborted.
GIT_LOW_SPEED_BYTES_S = 1000
GIT_LOW_SPEED_TIME_S = 30

FALLBACK_DISTRIBUTION = "pb1-detectron2"
FALLBACK_VERSION = "0.6"
FALLBACK_SDIST = f"{FALLBACK_DISTRIBUTION}-{FALLBACK_VERSION}.tar.gz"
FALLBACK_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
HASH_CHUNK_BYTES = 1 << 20

# Runtime dependencies of Detectron2 v0.6 that its trainer, data, evaluation, modeling and
# checkpoint modules import (its declared black/tensorboard/pydot/future pins are left out).
DETECTRON2_RUNTIME_DEPS = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "scipy",
]

# The modules that must import for Detectron2 to count as usable (path a, and after b or c).
REQUIRED_MODULES = [
    "detectron2.engine",
    "detectron2.data",
    "detectron2.evaluation",
    "detectron2.modeling",
    "detectron2.checkpoint",
]

# Name of the constant that marks the placeholder ``detectron2._C``; sam_detr.environment
# reads the same name (PLACEHOLDER_MARKER there) to tell the placeholder from real ops.
PLACEHOLDER_MARKER = "SAM_DETR_PLACEHOLDER"

PLACEHOLDER_SOURCE = f'''"""Placeholder for Detectron2's compiled C++/CUDA ops (``detectron2._C``).

Written by SAM-DETR's tools/install_detectron2.py: this Detectron2 was installed from the
{FALLBACK_DISTRIBUTION} fallback, whose sources lack the C++/CUDA code. Importing works; calling
any op raises CompiledOpUnavailableError naming it. SAM-DETR needs none of them.
"""

from typing import Any, Callable, NoReturn

{PLACEHOLDER_MARKER} = True

_MESSAGE = (
    "detectron2 was installed without its compiled C++/CUDA ops ({FALLBACK_DISTRIBUTION} "
    "fallback); `{{op}}` is unavailable. SAM-DETR does not need it; for DeformConv on GPU, "
    "rotated boxes or the fast COCO evaluator install detectron2 from source: "
    "pip install --no-build-isolation '{UPSTREAM_REQUIREMENT}'"
)


class CompiledOpUnavailableError(RuntimeError):
    """Raised when a compiled Detectron2 op is called on the placeholder."""


def get_compiler_version() -> str:
    """Read by detectron2.utils.collect_env."""
    return "none ({FALLBACK_DISTRIBUTION} fallback without compiled ops)"


def get_cuda_version() -> str:
    """Read by detectron2.utils.collect_env."""
    return "none ({FALLBACK_DISTRIBUTION} fallback without compiled ops)"


def has_cuda() -> bool:
    """Read by detectron2.utils.collect_env: no CUDA kernels were compiled."""
    return False


def __getattr__(name: str) -> Callable[..., NoReturn]:
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)

    def unavailable(*args: Any, **kwargs: Any) -> NoReturn:
        raise CompiledOpUnavailableError(_MESSAGE.format(op=name))

    unavailable.__name__ = name
    return unavailable
'''

# (path inside the sdist, text that must occur exactly once, replacement)
SOURCE_PATCHES = [
    (
        "detectron2/data/transforms/transform.py",
        "interp=Image.LINEAR",
        "interp=Image.BILINEAR",  # Image.LINEAR was removed in Pillow 10
    ),
    (
        "setup.py",
        "ext_modules=get_extensions(),",
        "ext_modules=[],  # patched by SAM-DETR: the sdist has no C++ sources",
    ),
]


def run(command: Sequence[str], *, timeout: Optional[float] = None, **kwargs) -> int:
    """Run ``command`` with its output passed through; return its exit status (124 on timeout)."""
    logger.info("$ %s", " ".join(command))
    try:
        return subprocess.run(list(command), timeout=timeout, check=False, **kwargs).returncode
    except subprocess.TimeoutExpired:
        logger.warning("timed out after %s s", timeout)
        return 124


def pip(*args: str) -> List[str]:
    """The pip command line of the running interpreter."""
    return [sys.executable, "-m", "pip", *args]


def with_constraints(args: List[str], constraints: Optional[Path]) -> List[str]:
    """``args`` plus ``-c constraints`` when a constraints file was given."""
    return args + (["-c", str(constraints)] if constraints else [])


def import_error() -> Optional[str]:
    """None when all REQUIRED_MODULES import in a fresh interpreter, else the error's last line."""
    code = "import importlib\n" + "".join(
        f"importlib.import_module({m!r})\n" for m in REQUIRED_MODULES
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=os.sep
    )
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def installed_distribution() -> Optional[str]:
    """Name of the installed distribution that provides the ``detectron2`` package, if any."""
    providers = metadata.packages_distributions().get("detectron2", [])
    return providers[0] if providers else None


def github_reachable() -> bool:
    """Whether ``git ls-remote`` of the upstream repository answers within the probe timeout."""
    if shutil.which("git") is None:
        logger.info("(b) skipped: git is not installed")
        return False
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    status = run(
        ["git", "ls-remote", "--exit-code", UPSTREAM_URL, "HEAD"],
        timeout=GIT_PROBE_TIMEOUT_S,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    if status != 0:
        logger.info("(b) skipped: %s is not reachable (git exit status %d)", UPSTREAM_URL, status)
    return status == 0


def install_upstream(constraints: Optional[Path]) -> bool:
    """Path (b): build upstream Detectron2 from git with its compiled ops. True on success."""
    if not github_reachable():
        return False
    env = dict(
        os.environ,
        GIT_TERMINAL_PROMPT="0",
        GIT_HTTP_LOW_SPEED_LIMIT=str(GIT_LOW_SPEED_BYTES_S),
        GIT_HTTP_LOW_SPEED_TIME=str(GIT_LOW_SPEED_TIME_S),
    )
    args = ["install", "--no-build-isolation", "--timeout", str(PIP_TIMEOUT_S), "--retries", "0"]
    status = run(pip(*with_constraints(args, constraints), UPSTREAM_REQUIREMENT), env=env)
    if status != 0:
        logger.warning("(b) failed: pip exit status %d", status)
        return False
    error = import_error()
    if error:
        logger.warning("(b) installed but does not import: %s", error)
        return False
    return True


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sdist(cache_dir: Path) -> Path:
    """The verified pb1-detectron2 sdist in ``cache_dir``, downloaded unless already there."""
    sdist = cache_dir / FALLBACK_SDIST
    if sdist.is_file() and sha256(sdist) == FALLBACK_SDIST_SHA256:
        logger.info("(c) using the cached %s", sdist)
        return sdist
    sdist.unlink(missing_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Without build isolation: preparing its metadata imports torch, present in this env only.
    spec = f"{FALLBACK_DISTRIBUTION}=={FALLBACK_VERSION}"
    args = pip("download", "--no-deps", "--no-build-isolation", "-d", str(cache_dir), spec)
    if run(args) != 0 or not sdist.is_file():
        raise RuntimeError(f"could not download {spec} from the package index")
    actual = sha256(sdist)
    if actual != FALLBACK_SDIST_SHA256:
        raise RuntimeError(f"{sdist}: sha256 {actual}, expected {FALLBACK_SDIST_SHA256}")
    return sdist


def unpack_and_patch(sdist: Path, cache_dir: Path) -> Path:
    """Unpack ``sdist`` afresh under ``cache_dir``, apply the patches; return the source tree."""
    source = cache_dir / f"{FALLBACK_DISTRIBUTION}-{FALLBACK_VERSION}"
    shutil.rmtree(source, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse unsafe members
            archive.extractall(cache_dir, filter="data")
        else:
            archive.extractall(cache_dir)
    for relative, old, new in SOURCE_PATCHES:
        path = source / relative
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise RuntimeError(f"{path}: expected exactly one {old!r} to patch")
        path.write_text(text.replace(old, new), encoding="utf-8")
        logger.info("(c) patched %s: %s -> %s", relative, old, new.split("  #")[0])
    (source / "detectron2" / "_C.py").write_text(PLACEHOLDER_SOURCE, encoding="utf-8")
    logger.info("(c) wrote the placeholder detectron2/_C.py")
    return source


def install_runtime_deps(constraints: Optional[Path]) -> None:
    """Install DETECTRON2_RUNTIME_DEPS (pinned by ``constraints`` when given)."""
    args = with_constraints(["install", "--quiet"], constraints)
    if run(pip(*args, *DETECTRON2_RUNTIME_DEPS)) != 0:
        raise RuntimeError("could not install Detectron2's runtime dependencies")


def install_fallback(cache_dir: Path, constraints: Optional[Path], with_deps: bool = True) -> None:
    """Path (c): install the patched pb1-detectron2 without compiled ops (and, ``with_deps``,
    its runtime dependencies)."""
    if with_deps:
        install_runtime_deps(constraints)
    source = unpack_and_patch(fetch_sdist(cache_dir), cache_dir)
    args = [
        "install",
        "--quiet",
        "--no-build-isolation",
        "--no-deps",
        "--no-cache-dir",
        str(source),
    ]
    if run(pip(*args)) != 0:
        raise RuntimeError(f"could not install the patched {FALLBACK_DISTRIBUTION} from {source}")
    error = import_error()
    if error:
        raise RuntimeError(f"the patched {FALLBACK_DISTRIBUTION} does not import: {error}")


def install(cache_dir: Path, constraints: Optional[Path], try_upstream: bool = True) -> str:
    """Run (a) -> (b) -> (c); return the path taken: "kept", "upstream" or "fallback"."""
    error = import_error()
    distribution = installed_distribution()
    deps_installed = False
    if error is not None and distribution is not None:
        logger.info("(a) %s does not import (%s): installing its runtime deps", distribution, error)
        install_runtime_deps(constraints)
        deps_installed = True
        error = import_error()
    if error is None:
        logger.info("(a) keeping the installed, importable detectron2 (%s)", distribution)
        return "kept"
    if distribution is not None:
        logger.warning("(a) %s still does not import (%s): replacing it", distribution, error)
        run(pip("uninstall", "--yes", distribution))
    else:
        logger.info("(a) detectron2 is not installed (%s)", error)
    if try_upstream and install_upstream(constraints):
        logger.info("(b) installed upstream detectron2 from %s", UPSTREAM_URL)
        return "upstream"
    if not try_upstream:
        logger.info("(b) skipped: --no-upstream")
    logger.info("(c) installing the %s==%s fallback", FALLBACK_DISTRIBUTION, FALLBACK_VERSION)
    install_fallback(cache_dir, constraints, with_deps=not deps_installed)
    logger.info("(c) installed %s without compiled ops", FALLBACK_DISTRIBUTION)
    return "fallback"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--constraint", type=Path, help="pip constraints file")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="download/build directory"
    )
    parser.add_argument(
        "--no-upstream", action="store_true", help="skip (b), the upstream git install"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[install_detectron2] %(message)s")
    constraints = args.constraint.resolve() if args.constraint else None
    try:
        install(args.cache_dir.resolve(), constraints, try_upstream=not args.no_upstream)
    except RuntimeError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
