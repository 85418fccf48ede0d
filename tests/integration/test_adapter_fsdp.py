"""FSDP2 (``fully_shard``): 2 gloo processes on CPU, parameters sharded along dim 0, end with the
parameters of a single-process run on the same global batch (SVGD and SPOS, An2020 and posterior
mode), and unsupported shard layouts are refused with an error naming the module and the layout.

The models are float64 so that the only difference from the single-process run is the rounding of
the gradient average (FSDP reduce-scatters the per-rank mean-loss gradients of 4 examples and divides
by 2; the single process averages 8): about 1e-16 relative per step, amplified by a few Adam/SGD
steps to well under the 1e-9 relative / 1e-11 absolute tolerance (the measured maximum is printed
with ``-s``). Every rank runs the same update on the same full tensors, so the two ranks' full
parameters must be bit-identical.

Layouts covered: ``nn.MultiheadAttention``'s packed ``in_proj_weight`` (48 rows over 2 ranks: the K
heads straddle the two shards; one layer with ``reshard_after_forward=False``), a BERT-like module
with separate ``query``/``key``/``value`` Linear layers of 9 rows (uneven shards 5 + 4, head 1
straddling them) with output projection and biases as particles, the same sharded along dim 1
(``shard_placement_fn``), and HSDP (2 x 1 and 1 x 2 replicate x shard meshes).

Function space (``space="outputs"``): the heads' outputs (and, for ``features="both"``, their maps) are
read on each rank's batch from the unsharded parameters FSDP2 uses in the forward pass, the kernel is
computed on all ranks' features and each rank pulls back its columns; with every token position in the
subsample this is the single process on the whole batch. One configuration also checkpoints every
layer (``torch.utils.checkpoint``, non-reentrant), whose backward recomputes the forward.
"""

import os
import socket
import tempfile
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from attention_adapter import An2020, HeadLayout, HeadRepulsionPenalty, HeadSelection, Posterior, RepulsiveHeads

fsdp = pytest.importorskip("torch.distributed.fsdp")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

WORLD, STEPS, GLOBAL_BATCH = 2, 3, 8
CONFIGS = {  # name: (model, wrapping, adapter)
    "mha-an2020-svgd": ("mha", "fsdp", "an2020-svgd"),
    "mha-an2020-spos": ("mha", "fsdp", "an2020-spos"),
    "mha-posterior-spos": ("mha", "fsdp", "posterior-spos"),
    "bert-an2020-svgd": ("bert", "fsdp", "an2020-svgd"),
    "bert-an2020-spos": ("bert", "fsdp", "an2020-spos"),
    "bert-posterior-svgd": ("bert", "fsdp", "posterior-svgd"),
    "bert-posterior-spos": ("bert", "fsdp", "posterior-spos"),
    "mha-hsdp2x1-an2020-spos": ("mha", "hsdp2x1", "an2020-spos"),
    "mha-hsdp1x2-posterior-spos": ("mha", "hsdp1x2", "posterior-spos"),
    "bert-dim1-an2020-spos": ("bert", "dim1", "an2020-spos"),
    # function space: the heads' outputs (and maps) on each rank's batch, the kernel on all ranks' features
    "mha-outputs-an2020-svgd": ("mha", "fsdp", "outputs-an2020-svgd"),
    "mha-both-posterior-spos": ("mha", "fsdp", "both-posterior-spos"),
    "bert-outputs-posterior-svgd": ("bert", "fsdp", "outputs-posterior-svgd"),
    "bert-checkpointed-outputs-an2020-spos": ("bert-checkpointed", "fsdp", "outputs-an2020-spos"),
}


class BertLikeAttention(nn.Module):
    """Self-attention with separate query/key/value Linear layers: 3 heads of size 3 (9 rows)."""

    def __init__(self, hidden=12, heads=3, head_size=3):
        super().__init__()
        self.num_attention_heads, self.head_size = heads, head_size
        self.query = nn.Linear(hidden, heads * head_size)
        self.key = nn.Linear(hidden, heads * head_size)
        self.value = nn.Linear(hidden, heads * head_size)
        self.dense = nn.Linear(heads * head_size, hidden)

    def forward(self, x):
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, self.num_attention_heads, self.head_size).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / self.head_size ** 0.5, dim=-1)
        return self.dense((att @ v).transpose(1, 2).reshape(b, t, -1))


class BertLikeLayer(nn.Module):
    def __init__(self, hidden=12):
        super().__init__()
        self.attention = BertLikeAttention(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 20), nn.Tanh(), nn.Linear(20, hidden))

    def forward(self, x):
        x = x + self.attention(x)
        return x + self.ffn(x)


class BertLike(nn.Module):
    def __init__(self, hidden=12, layers=2, checkpointed=False):
        super().__init__()
        self.layers = nn.ModuleList(BertLikeLayer(hidden) for _ in range(layers))
        self.checkpointed = checkpointed

    def forward(self, x):
        for layer in self.layers:  # activation checkpointing: the layer's forward is recomputed in backward
            x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False) if self.checkpointed else layer(x)
        return x


BERT_LAYOUT = HeadLayout(num_heads="num_attention_heads", q="query.weight", k="key.weight", v="value.weight",
                         out=("dense.weight", 1), q_bias="query.bias", k_bias="key.bias", v_bias="value.bias")
HIDDEN = {"mha": 16, "bert": 12, "bert-checkpointed": 12}


def _model(kind):
    torch.manual_seed(0)
    if kind == "mha":
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double()
    return BertLike(checkpointed=kind == "bert-checkpointed").double()


def _global_batch(kind, step):
    gen = torch.Generator().manual_seed(100 + step)
    shape = (GLOBAL_BATCH, 5, HIDDEN[kind])
    return torch.randn(*shape, generator=gen, dtype=torch.float64), torch.randn(*shape, generator=gen,
                                                                                 dtype=torch.float64)


def _adapter(model, kind, adapter):
    layouts = {BertLikeAttention: BERT_LAYOUT} if kind.startswith("bert") else None
    space = {}
    if adapter.split("-")[0] in ("outputs", "both"):  # function space: every position of the batch (20 per rank)
        space = dict(space="outputs", features=adapter.split("-")[0], tokens=64)
        adapter = adapter.split("-", 1)[1]
    method = adapter.split("-")[1]
    if adapter.startswith("an2020"):
        heads = RepulsiveHeads(model, method, preset=An2020(alpha=0.5, epsilon=0.1), seed=5,
                               selection=HeadSelection(layouts=layouts), **space)
        return heads, torch.optim.Adam(model.parameters(), lr=1e-2)
    extra = dict(beta=2.0) if method == "spos" else {}
    bert = kind.startswith("bert")
    heads = RepulsiveHeads(model, method, step_size=0.5, posterior=Posterior(dataset_size=64, prior=1.0), seed=7,
                           selection=HeadSelection(layouts=layouts, include_output=bert, include_bias=bert),
                           **extra, **space)
    return heads, torch.optim.SGD(model.parameters(), lr=1e-3)


def _train(model, kind, adapter, rank=0, world=1):
    heads, opt = _adapter(model, kind, adapter)
    heads.attach(opt)
    per = GLOBAL_BATCH // world
    for step in range(STEPS):
        x, y = _global_batch(kind, step)
        x, y = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()  # FSDP reduce-scatters (averages) the gradients here
        opt.step()  # the adapter runs here, on the full gradients, and writes back this rank's shards
    return heads


PENALTY_STEPS = 2


def _train_penalty(model, kind, rank=0, world=1):
    """SGD on the mean-squared loss plus the function-space penalty, each rank on its half of the batch;
    ``world=1``: the mean of the two halves' objectives in one process (FSDP averages the ranks' gradients)."""
    layouts = {BertLikeAttention: BERT_LAYOUT} if kind.startswith("bert") else None
    pen = HeadRepulsionPenalty(model, weight=5.0, space="outputs", features="outputs", tokens=64,
                               selection=HeadSelection(layouts=layouts))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    per = GLOBAL_BATCH // WORLD
    for step in range(PENALTY_STEPS):
        x, y = _global_batch(kind, step)
        opt.zero_grad()
        total = 0.0
        for r in ([rank] if world > 1 else range(WORLD)):
            xs, ys = x[r * per:(r + 1) * per], y[r * per:(r + 1) * per]
            total = total + (((model(xs) - ys) ** 2).mean() + pen()) / (1 if world > 1 else WORLD)
        total.backward()
        opt.step()
    pen.remove_hooks()


def _full_state(model):
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}


def _dim1(t):
    return t.dim() == 2 and t.shape[1] % WORLD == 0


def _shard(model, wrapping):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from torch.distributed.tensor import Shard

    kw = {}
    if wrapping.startswith("hsdp"):  # HSDP: placements (Replicate(), Shard(0)) on a replicate x shard mesh
        shape = (WORLD, 1) if wrapping == "hsdp2x1" else (1, WORLD)
        kw["mesh"] = init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard"))
    if wrapping == "dim1":  # placements (Shard(1),) where FSDP allows it (it refuses uneven dim-1 shards)
        kw["shard_placement_fn"] = lambda p: Shard(1) if _dim1(p) else None
    for i, layer in enumerate(model.layers):
        fully_shard(layer, reshard_after_forward=i != 0, **kw)
    fully_shard(model, **kw)
    return model


def _errors():
    """Messages of the refused layouts (every rank builds them the same way)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Partial

    out = {}
    # a head parameter left out of sharding (ignored_params): its gradient is never synchronised
    model = _model("mha")
    fully_shard(model, ignored_params={model.layers[1].self_attn.in_proj_weight})
    try:
        RepulsiveHeads(model, "svgd")
    except ValueError as e:
        out["ignored"] = f"{type(e).__name__}: {e}"
    # a Partial (unreduced) placement, as tensor parallelism may produce
    model = _model("mha")
    mesh = init_device_mesh("cpu", (WORLD,))
    attn = model.layers[0].self_attn
    attn.in_proj_weight = nn.Parameter(DTensor.from_local(attn.in_proj_weight.detach() / WORLD, mesh, [Partial()]))
    try:
        RepulsiveHeads(model, "svgd")
    except ValueError as e:
        out["partial"] = f"{type(e).__name__}: {e}"
    # FSDP1 flattens the parameters: the heads' layout is gone
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = FullyShardedDataParallel(_model("mha"), device_id=torch.device("cpu"))
    try:
        RepulsiveHeads(model, "svgd")
    except ValueError as e:
        out["fsdp1"] = f"{type(e).__name__}: {e}"
    return out


def _worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    warnings.simplefilter("error")  # as pytest's filterwarnings = error: FSDP2 on CPU/gloo emits none
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name, (kind, wrapping, adapter) in CONFIGS.items():
            model = _shard(_model(kind), wrapping)
            heads = _train(model, kind, adapter, rank, WORLD)
            local = {k: v.to_local().clone() for k, v in model.state_dict().items() if hasattr(v, "to_local")}
            # ParticleGroup.gather without a per-step cache (head_diversity, the recorder): all-gathers per block
            rows = {g.name: g.gather("data").clone() for g in heads.groups}
            try:  # the hook already ran on these (sharded) gradients: a second apply() is refused
                heads.apply()
                results.setdefault("reapplied", []).append(name)
            except RuntimeError as e:
                assert "called twice" in str(e), e
            results[name] = {"full": _full_state(model), "local": local, "step": heads.step, "rows": rows}
        for kind in ("mha", "bert"):  # the penalty in function space: autograd, through FSDP's own hooks
            model = _shard(_model(kind), "fsdp")
            _train_penalty(model, kind, rank, WORLD)
            results[f"penalty-{kind}"] = _full_state(model)
        results["errors"] = _errors()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks():
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=True)
        out = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    print(f"\nFSDP workers: {time.perf_counter() - t0:.1f} s for {len(CONFIGS)} configurations")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fsdp_two_ranks_match_single_process(ranks, name):
    kind, _, adapter = CONFIGS[name]
    ref_model = _model(kind)
    heads = _train(ref_model, kind, adapter)
    ref, start = ref_model.state_dict(), _model(kind).state_dict()
    worst = 0.0
    for k in ref:
        a, b = ranks[0][name]["full"][k], ranks[1][name]["full"][k]
        assert torch.equal(a, b), k  # both ranks ran the same update on the same full tensors
        torch.testing.assert_close(a, ref[k], rtol=1e-9, atol=1e-11, msg=lambda m: f"{name} {k}: {m}")
        worst = max(worst, float((a - ref[k]).abs().max()))
    wrapping = CONFIGS[name][1]
    for r in range(WORLD):  # each rank holds its own chunk of the full parameters (5 + 4 rows if uneven)
        for k, loc in ranks[r][name]["local"].items():
            full = ranks[r][name]["full"][k]
            if wrapping == "hsdp2x1":  # replicated over the 2 ranks, "sharded" over 1
                assert torch.equal(loc, full), k
            else:
                dim = 1 if wrapping == "dim1" and _dim1(full) else 0
                assert torch.equal(loc, torch.chunk(full, WORLD, dim)[r]), k
    assert ranks[0][name]["step"] == heads.step == STEPS
    ref_rows = {g.name: g.gather("data") for g in heads.groups}
    assert list(ranks[0][name]["rows"]) == list(ref_rows)  # same groups, same order on every rank
    for r in range(WORLD):
        for g, rows in ranks[r][name]["rows"].items():
            torch.testing.assert_close(rows, ref_rows[g], rtol=1e-9, atol=1e-11)
    moved = [k for k in ref if not torch.equal(ref[k], start[k])]
    assert any("self_attn.in_proj_weight" in k or "query.weight" in k for k in moved)
    print(f"{name}: max |FSDP - single process| = {worst:.2e}")


@pytest.mark.slow
def test_fsdp_uneven_shards_straddle_heads(ranks):
    local = ranks[0]["bert-an2020-svgd"]["local"]
    assert local["layers.0.attention.query.weight"].shape == (5, 12)
    assert ranks[1]["bert-an2020-svgd"]["local"]["layers.0.attention.query.weight"].shape == (4, 12)


@pytest.mark.slow
def test_fsdp_unsupported_layouts_are_refused(ranks):
    for r in range(WORLD):
        assert "reapplied" not in ranks[r], ranks[r]["reapplied"]  # apply() twice is caught on DTensor grads
        errors = ranks[r]["errors"]
        assert set(errors) == {"ignored", "partial", "fsdp1"}, errors
        msg = errors["ignored"]
        assert msg.startswith("ShardingError") and "'layers.1.self_attn.in_proj_weight'" in msg, msg
        assert "MultiheadAttention" in msg and "ignored_params" in msg and "plain tensor of shape (48, 16)" in msg
        msg = errors["partial"]
        assert msg.startswith("ShardingError") and "'layers.0.self_attn.in_proj_weight'" in msg, msg
        assert "Partial" in msg and "placements (Partial(" in msg and "Shard(d) / Replicate()" in msg, msg
        msg = errors["fsdp1"]
        assert msg.startswith("ShardingError") and "FullyShardedDataParallel (FSDP1)" in msg, msg
        assert "expected torch.distributed.fsdp.fully_shard (FSDP2)" in msg, msg


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mha", "bert"])
def test_fsdp_function_space_penalty_is_the_mean_of_the_ranks_objectives(ranks, kind):
    """Each rank's penalty compares the heads' outputs on its own batch; FSDP averages the gradients of
    loss + penalty over the ranks (layer 0 keeps its unsharded parameters after forward, layer 1 frees
    them and FSDP unshards it again in backward, before autograd reaches the penalty's nodes inside it)."""
    ref = _model(kind)
    _train_penalty(ref, kind)
    start = _model(kind).state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(ranks[0][f"penalty-{kind}"][k], ranks[1][f"penalty-{kind}"][k]), k
        torch.testing.assert_close(ranks[0][f"penalty-{kind}"][k], v, rtol=1e-9, atol=1e-11)
    assert any(not torch.equal(v, start[k]) for k, v in ref.state_dict().items() if "query" in k or "in_proj" in k)
