"""torch.distributed (gloo, 2 CPU processes): ACM decided on rank 0, rollbacks in lockstep."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from st_fast.config import STConfig, TrainConfig
from st_fast.engine import Trainer

from .helpers import toy_dataset


def _worker(rank, world, port, out_dir, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(arch="small-resnet", epochs=3, batch_size=32, lr=0.05, device="cpu",
                          optimizer="torch", crop_padding=2)
        st = STConfig(method="st", tau=1.0, alpha=0.5, acm_embedding=None, acm_per_class=8)
        t = Trainer(cfg, st, toy_dataset(128), toy_dataset(32, seed=1), run_dir=out_dir, progress=False)
        # rank 0 reads "trigger" at epoch 2 only; rank 1 would trigger every time if it were asked
        readings = iter([0.5, 2.0, 0.5]) if rank == 0 else iter([9.0, 9.0, 9.0])
        t.measure_acm = lambda: (next(readings), 0.0)
        hist = t.fit()
        flat = torch.cat([p.detach().flatten() for p in t.model.parameters()])
        results[rank] = {"rolled": [r["rolled_back"] for r in hist], "c": t.c, "params": flat,
                         "batches": len(t.loader)}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_rolls_back_in_lockstep(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, port, str(tmp_path), results), nprocs=2, join=True)
        r0, r1 = results[0], results[1]
    assert r0["rolled"] == r1["rolled"] == [0, 1, 0]  # rank 0's readings decided for both
    assert r0["c"] == r1["c"] == 1
    assert torch.equal(r0["params"], r1["params"])  # identical models after the rollback
    assert (tmp_path / "history.csv").exists()  # written once, by rank 0
