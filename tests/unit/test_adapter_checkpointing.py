"""Function space under gradient checkpointing: the same update as without it, one record per forward pass.

Non-reentrant checkpointing runs the forward pass with gradients (the adapter pulls back there, through
the saved-tensor hooks, which recompute what they dropped) and recomputes it in the backward pass (not
recorded again); reentrant checkpointing runs it without gradients (nothing recorded) and recomputes it
with gradients inside the backward pass (recorded there). Either way the gradients after ``apply()``
must be those of the same steps without checkpointing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attention_adapter import HeadRepulsionPenalty, RepulsiveHeads

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("torch_one_thread")
BATCHES = [torch.tensor([[1, 5, 7, 2, 9, 3, 4]]), torch.tensor([[3, 8, 2, 6, 1, 4, 9]])]


def _bert(checkpointing=None):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=32, attn_implementation="eager", hidden_dropout_prob=0.1,
                                  attention_probs_dropout_prob=0.1)
    model = transformers.BertModel(cfg).double().train()  # dropout on: the recomputation must replay it
    if checkpointing is not None:
        model.activation_checkpointing_enable({"use_reentrant": checkpointing == "reentrant"})
    return model


def _steps(checkpointing, features, micro_batches):
    """Two optimizer steps, each of ``micro_batches`` accumulated forward/backward passes; returns the
    head gradients after apply() of each step and the number of records per step."""
    model = _bert(checkpointing)
    heads = RepulsiveHeads(model, "svgd", repulsion=0.8, space="outputs", features=features, tokens=5, seed=1)
    counts, record = [], heads._outputs.consume

    def counting(group, parts, params):
        counts.append(group.name)
        record(group, parts, params)

    heads._outputs.consume = counting
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads, per_step = [], []
    for step in range(2):
        opt.zero_grad()
        torch.manual_seed(10 + step)  # the same dropout masks with and without checkpointing
        for ids in BATCHES[:micro_batches]:
            (model(ids).last_hidden_state.pow(2).mean() / micro_batches).backward()
        per_step.append(len(counts))
        counts.clear()
        heads.apply()
        grads.append([p.grad.clone() for p in heads.head_particles.parameters()])
        opt.step()
    heads.remove_hooks()
    return grads, per_step


@pytest.mark.parametrize("checkpointing", ["non-reentrant", "reentrant"])
@pytest.mark.parametrize("features,micro_batches", [("outputs", 1), ("both", 2)])
def test_checkpointed_steps_equal_plain_steps(checkpointing, features, micro_batches):
    want, plain_counts = _steps(None, features, micro_batches)
    got, counts = _steps(checkpointing, features, micro_batches)
    assert counts == plain_counts == [2 * micro_batches] * 2  # one record per module and forward pass
    for step_want, step_got in zip(want, got):
        for a, b in zip(step_want, step_got):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13)


def test_penalty_under_non_reentrant_checkpointing_and_reentrant_refused():
    values = {}
    for mode in (None, "non-reentrant"):
        model = _bert(mode)
        pen = HeadRepulsionPenalty(model, weight=1.0, space="outputs", features="both", tokens=4)
        torch.manual_seed(3)
        loss = model(BATCHES[0]).last_hidden_state.pow(2).mean()
        value = pen()
        (loss + value).backward()
        values[mode] = (value.detach(), [p.grad.clone() for p in pen.head_particles.parameters()])
        pen.remove_hooks()
    torch.testing.assert_close(values["non-reentrant"][0], values[None][0], rtol=1e-12, atol=0)
    for a, b in zip(values[None][1], values["non-reentrant"][1]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13)
    model = _bert("reentrant")
    pen = HeadRepulsionPenalty(model, space="outputs")
    model(BATCHES[0])
    with pytest.raises(RuntimeError, match="reentrant"):
        pen()
    pen.remove_hooks()


def test_checkpointed_torch_encoder_layers():
    """``torch.utils.checkpoint`` around nn.TransformerEncoderLayer (nn.MultiheadAttention's hook re-runs
    the module for its per-head maps and values)."""

    class Encoder(nn.Module):
        def __init__(self, checkpointed):
            super().__init__()
            torch.manual_seed(0)
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
                                        for _ in range(2))
            self.checkpointed = checkpointed

        def forward(self, x):
            for layer in self.layers:
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False) if self.checkpointed else layer(x)
            return x

    x = torch.randn(3, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointed in (False, True):
        model = Encoder(checkpointed).double()
        heads = RepulsiveHeads(model, "svgd", space="outputs", features="both", tokens=6)
        model(x).pow(2).mean().backward()
        heads.apply()
        grads.append([p.grad.clone() for p in heads.head_particles.parameters()])
        heads.remove_hooks()
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13)
