"""Two CPU processes started by torchrun (env:// rendezvous, gloo) train the tiny config for a
few iterations through train_net.py's main: the run completes, a step whose loss is NaN on
rank 1 only is skipped on both ranks, both ranks end with identical finite weights, and only
rank 0 writes into OUTPUT_DIR. Resumed after its newest checkpoint was truncated on disk, both
ranks fall back to the same earlier checkpoint and train on in step."""

import os

import torch
from distributed_worker import NAN_ITER, NAN_RANK_ENV, WEIGHTS_DIR_ENV
from train_net_helpers import (
    REPO,
    TINY_CONFIG,
    make_tiny_datasets,
    run_train_net,
    tiny_dataset_args,
    tiny_overrides,
)

NUM_PROCESSES = 2


def test_torchrun_two_cpu_processes(tmp_path, monkeypatch):
    data = make_tiny_datasets(str(tmp_path / "data"))
    out, weights = tmp_path / "out", tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(weights))
    monkeypatch.setenv(NAN_RANK_ENV, "1")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NUM_PROCESSES}"]
    args = ["--config-file", TINY_CONFIG] + tiny_dataset_args(data) + tiny_overrides(str(out))
    worker = os.path.join(REPO, "tests", "distributed_worker.py")
    r = run_train_net(args, launcher=launcher, script=worker)
    assert r.returncode == 0, r.stdout[-6000:]
    assert "World size: 2" in r.stdout
    # Rank 0 (the log shown) had a finite loss, and skipped the step all the same.
    assert f"Iteration {NAN_ITER} skipped: non-finite loss on at least one process" in r.stdout

    first_run = _assert_ranks_agree(weights)

    written = sorted(
        os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
    )
    assert not [f for f in written if "rank" in f], written
    assert {"config.yaml", "log.txt", "last_checkpoint", "model_final.pth"} <= set(written)
    assert "copypaste: AP,AP50" in r.stdout  # evaluation gathered over both ranks

    final = out / "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    monkeypatch.delenv(NAN_RANK_ENV)
    r = run_train_net(
        ["--resume"] + args + ["SOLVER.MAX_ITER", "6"], launcher=launcher, script=worker
    )
    assert r.returncode == 0, r.stdout[-6000:]
    assert f"Cannot resume from {final}" in r.stdout
    assert "Resuming at iteration 4" in r.stdout  # from model_0000003.pth
    resumed = _assert_ranks_agree(weights)
    assert any(not torch.equal(v, first_run[k]) for k, v in resumed.items())


def _assert_ranks_agree(weights_dir):
    """The ranks' saved weights are identical and finite; returns rank 0's."""
    ranks = [
        torch.load(weights_dir / f"rank{i}.pth", weights_only=True) for i in range(NUM_PROCESSES)
    ]
    assert all(x["world_size"] == NUM_PROCESSES for x in ranks)
    assert ranks[0]["model"].keys() == ranks[1]["model"].keys()
    for k, v in ranks[0]["model"].items():
        assert torch.equal(v, ranks[1]["model"][k]), k
        assert not v.is_floating_point() or torch.isfinite(v).all(), k
    return ranks[0]["model"]
