"""DistributedDataParallel: 2 gloo processes on CPU end with identical parameters, equal to a
single-process run on the same global batch (SVGD and SPOS: every rank draws the same noise).

The other particle spaces likewise. In function space each rank reads the heads' outputs on its own
half of the batch; the adapter gathers every rank's outputs, computes the kernel on all of them (the
same on every rank), pulls back its own columns and sums the ranks' pull-backs, so with every token
position in the subsample (20 per rank, ``tokens=64``) it equals the single process on the whole batch, also
with outputs and maps together under non-reentrant activation checkpointing."""

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from attention_adapter import An2020, RepulsiveHeads

WORLD, STEPS, GLOBAL_BATCH = 2, 3, 8


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double()


def _global_batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, 5, 16, generator=gen, dtype=torch.float64)
    return x, torch.randn(GLOBAL_BATCH, 5, 16, generator=gen, dtype=torch.float64)


def _train(model, method, rank=0, world=1, space="weights"):
    heads = RepulsiveHeads(model, method, preset=An2020(alpha=0.5, epsilon=0.1), seed=5, space=space)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    heads.attach(opt)
    per = GLOBAL_BATCH // world
    for step in range(STEPS):
        x, y = _global_batch(step)
        x, y = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()  # DDP all-reduces (averages) during backward
        opt.step()  # the adapter runs here, after the all-reduce
    return heads


def _worker(rank, port, out_dir, method, space="weights"):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        _train(model, method, rank, WORLD, space)
        torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_ddp_two_ranks_match_single_process(method):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(_free_port(), tmp, method), nprocs=WORLD, join=True)
        states = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    ref_model = _model()
    _train(ref_model, method)
    ref = ref_model.state_dict()
    start = _model().state_dict()
    for k in ref:
        assert torch.equal(states[0][k], states[1][k]), k  # replicas identical, noise included
        torch.testing.assert_close(states[0][k], ref[k], rtol=1e-9, atol=1e-11)
    assert not torch.equal(ref["layers.0.self_attn.in_proj_weight"], start["layers.0.self_attn.in_proj_weight"])


def _worker_spaces(rank, port, out_dir, configs):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for method, space in configs:  # one process group for all configurations (start-up is the cost)
            model = nn.parallel.DistributedDataParallel(_model())
            heads = _train(model, method, rank, WORLD, space)
            heads.remove_hooks()
            torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()},
                       os.path.join(out_dir, f"{space}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_other_spaces_keep_replicas_identical():
    configs = [("svgd", "circuits"), ("spos", "outputs")]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker_spaces, args=(_free_port(), tmp, configs), nprocs=WORLD, join=True)
        states = {space: [torch.load(os.path.join(tmp, f"{space}-rank{r}.pt")) for r in range(WORLD)]
                  for _, space in configs}
    start = _model().state_dict()
    for method, space in configs:
        for k in states[space][0]:
            assert torch.equal(states[space][0][k], states[space][1][k]), (space, k)
        assert not torch.equal(states[space][0]["layers.0.self_attn.in_proj_weight"],
                               start["layers.0.self_attn.in_proj_weight"])
    # circuit space reads weights and averaged gradients only, function space the kernel of all ranks' outputs:
    # the single-process result
    for method, space in configs:
        ref_model = _model()
        _train(ref_model, method, space=space).remove_hooks()
        for k, v in ref_model.state_dict().items():
            torch.testing.assert_close(states[space][0][k], v, rtol=1e-9, atol=1e-11, msg=lambda m: f"{space} {k}: {m}")


def _worker_gather(rank, port, out_dir):
    from attention_adapter.outputs import gather_columns

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mine = torch.arange(4 * (3 + 2 * rank), dtype=torch.float64).reshape(4, -1) + 100 * rank  # 3 and 5 columns
        full, start = gather_columns(mine)
        torch.save({"full": full, "start": start}, os.path.join(out_dir, f"gather{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_columns_joins_ranks_with_different_token_counts():
    """Function space gathers every rank's features (ranks may hold different numbers of tokens, e.g. the last
    batch of an epoch) in rank order, and each rank learns where its own columns start."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker_gather, args=(_free_port(), tmp), nprocs=WORLD, join=True)
        got = [torch.load(os.path.join(tmp, f"gather{r}.pt")) for r in range(WORLD)]
    want = torch.cat([torch.arange(12, dtype=torch.float64).reshape(4, 3),
                      torch.arange(20, dtype=torch.float64).reshape(4, 5) + 100], dim=1)
    for r in range(WORLD):
        assert torch.equal(got[r]["full"], want)
    assert [g["start"] for g in got] == [0, 3]


class _CheckpointedEncoder(nn.Module):
    """The layers of ``_model()``, each run under non-reentrant activation checkpointing (or plainly)."""

    def __init__(self, checkpointed):
        super().__init__()
        self.layers = _model().layers
        self.checkpointed = checkpointed

    def forward(self, x):
        for layer in self.layers:
            x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False) if self.checkpointed else layer(x)
        return x


def _train_features(model, rank=0, world=1):
    heads = RepulsiveHeads(model, "svgd", preset=An2020(alpha=0.5, epsilon=0.1), space="outputs", features="both")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    heads.attach(opt)
    per = GLOBAL_BATCH // world
    for step in range(STEPS):
        x, y = _global_batch(step)
        x, y = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    heads.remove_hooks()


def _worker_checkpointed(rank, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_CheckpointedEncoder(True))
        _train_features(model, rank, WORLD)
        torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()},
                   os.path.join(out_dir, f"ckpt{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_function_space_with_maps_under_checkpointing_matches_single_process():
    """Outputs and maps, DDP and non-reentrant checkpointing together: the features are gathered in the forward
    pass (not again in the recomputation), and the result is the plain single process on the whole batch."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker_checkpointed, args=(_free_port(), tmp), nprocs=WORLD, join=True)
        states = [torch.load(os.path.join(tmp, f"ckpt{r}.pt")) for r in range(WORLD)]
    ref = _CheckpointedEncoder(False)
    _train_features(ref)
    start = _CheckpointedEncoder(False).state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(states[0][k], states[1][k]), k
        torch.testing.assert_close(states[0][k], v, rtol=1e-9, atol=1e-11, msg=lambda m: f"{k}: {m}")
    assert not torch.equal(ref.state_dict()["layers.0.self_attn.in_proj_weight"],
                           start["layers.0.self_attn.in_proj_weight"])


def _worker_sum(rank, port, out_dir):
    from attention_adapter.outputs import sum_over_ranks

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mine = [torch.full((2, 3), 1.0 + rank, dtype=torch.bfloat16),   # a bfloat16 group
                torch.full((2, 2), 0.25 * (rank + 1), dtype=torch.float64),
                torch.full((3,), 0.5 * (rank + 1), dtype=torch.bfloat16)]
        torch.save(sum_over_ranks(mine), os.path.join(out_dir, f"sum{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_pullbacks_summed_over_ranks_keep_each_groups_dtype():
    """Function space sums the ranks' pull-backs of groups of mixed dtypes in one all-reduce: each group comes
    back in its own dtype (a bfloat16 group stays bfloat16), the sum taken in float32 or wider."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker_sum, args=(_free_port(), tmp), nprocs=WORLD, join=True)
        got = [torch.load(os.path.join(tmp, f"sum{r}.pt")) for r in range(WORLD)]
    want = [torch.full((2, 3), 3.0, dtype=torch.bfloat16), torch.full((2, 2), 0.75, dtype=torch.float64),
            torch.full((3,), 1.5, dtype=torch.bfloat16)]
    for r in range(WORLD):
        assert [t.dtype for t in got[r]] == [w.dtype for w in want]
        for t, w in zip(got[r], want):
            assert torch.equal(t, w)
