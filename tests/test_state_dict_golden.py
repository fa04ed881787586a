"""Guard of the model's outside: for every config in ``configs/`` and every variant of the
convergence study, the state-dict keys with their shapes (hashed per module) and a hash of the
seeded initialisation equal the golden file ``tests/golden/state_dicts.json``. Checkpoints,
converted official weights and the demo's numbers depend on both, so code moves and refactors
must leave them identical.

The golden file is written only when an issue says that parameters change, with
``python tests/test_state_dict_golden.py --write`` (it records what the current code builds).
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from detectron2.modeling import build_model
from sam_detr.config import get_sam_detr_cfg

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
GOLDEN = TESTS / "golden" / "state_dicts.json"
CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
STUDY_CONFIG = REPO_ROOT / "configs" / "demo" / "sam_detr_R18_synthetic.yaml"
BUILD = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
SEED = 0
# Keys are grouped by their first two names (three when the second is a layer index), so that
# a failure names the module whose keys or shapes changed.
MODULE_DEPTH = 2
KEY_HASH_CHARS = 16


def _study_variants() -> Dict[str, Tuple[str, ...]]:
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import convergence_study
    finally:
        sys.path.pop(0)
    return {
        name: convergence_study.COMMON_OVERRIDES + v.overrides
        for name, v in convergence_study.VARIANTS.items()
    }


def cases() -> Dict[str, Tuple[Path, List[str]]]:
    """Case name -> (config file, overrides)."""
    found = {str(p.relative_to(REPO_ROOT)): (p, BUILD) for p in CONFIGS}
    for name, overrides in _study_variants().items():
        found[f"study:{name}"] = (STUDY_CONFIG, BUILD + list(overrides))
    return found


def _module(key: str) -> str:
    """The module a state-dict key belongs to, at the depth the golden file records:
    ``transformer.decoder.3.cross_attn.v_proj.weight`` -> ``transformer.decoder.3``."""
    parts = key.split(".")
    return ".".join(parts[: MODULE_DEPTH + parts[MODULE_DEPTH - 1].isdigit()])


def record(config: Path, overrides: List[str]) -> Dict:
    """Of the model built after ``torch.manual_seed(SEED)``: its parameter count, per module
    (:func:`_module`) a hash of its keys with their shapes in state-dict order, and the SHA-256
    of every key and tensor's bytes in order."""
    torch.manual_seed(SEED)
    model = build_model(get_sam_detr_cfg(str(config), overrides))
    state = model.state_dict()
    digest = hashlib.sha256()
    listing: Dict[str, List[str]] = {}
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(value.detach().contiguous().cpu().numpy().tobytes())
        listing.setdefault(_module(key), []).append(f"{key} {tuple(value.shape)}")
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "modules": {
            name: hashlib.sha256("\n".join(keys).encode()).hexdigest()[:KEY_HASH_CHARS]
            for name, keys in listing.items()
        },
        "init_sha256": digest.hexdigest(),
    }


def _golden() -> Dict:
    return json.loads(GOLDEN.read_text())


CASES = cases()


@pytest.mark.parametrize("name", list(CASES))
def test_keys_shapes_and_initialisation_match_the_golden_file(name):
    golden = _golden()
    assert name in golden, f"{name} has no golden entry: {GOLDEN} was written without it"
    got, want = record(*CASES[name]), golden[name]
    changed = sorted(
        set(got["modules"].items()).symmetric_difference(want["modules"].items()),
    )
    assert (
        not changed
    ), f"{name}: keys or shapes changed in modules {sorted({m for m, _ in changed})}"
    assert list(got["modules"]) == list(want["modules"]), f"{name}: modules in another order"
    assert got["parameters"] == want["parameters"]
    assert got["init_sha256"] == want["init_sha256"], f"{name}: the seeded initialisation moved"


def test_golden_file_covers_exactly_the_current_cases():
    assert sorted(_golden()) == sorted(CASES)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"(re)write {GOLDEN}")
    if parser.parse_args().write:
        GOLDEN.parent.mkdir(exist_ok=True)
        table = {name: record(*case) for name, case in CASES.items()}
        GOLDEN.write_text(json.dumps(table, indent=1) + "\n")
        print(f"wrote {GOLDEN}: {len(table)} cases")
