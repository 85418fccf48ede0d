"""A few training steps of real models with the adapter attached: finite gradients, and heads that
move apart (diversity metric) compared with the same run, same seed, without the adapter.

The heads start near-collapsed (every head = head 0 + 1% noise), the "attention collapse" the
repulsion is meant to undo; from a random initialisation the effect is there but too small to
measure reliably in a handful of steps.
"""

import pytest
import torch
from torch import nn

from attention_adapter import An2020, HeadParticles, Posterior, RepulsiveHeads, head_diversity

transformers = pytest.importorskip("transformers")

STEPS = 8


pytestmark = pytest.mark.usefixtures("torch_one_thread")



def _collapse(model, noise=1e-2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for grp in HeadParticles(model).groups:
            x = grp.gather("data")
            new = x[0:1].expand_as(x) + noise * x.std() * torch.randn(x.shape, generator=gen)
            grp.scatter({id(p): p.data for p in grp.params}, new)


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.encoder(x)).squeeze(-1)


def _torch_model():
    return Regressor()


def _bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, attn_implementation="eager")
    return transformers.BertForMaskedLM(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0,
                                  eos_token_id=0, attn_implementation="eager", loss_type="ForCausalLM")
    return transformers.GPT2LMHeadModel(cfg)


def _torch_loss(model, gen):
    x = torch.randn(4, 10, 32, generator=gen)
    return ((model(x) - x.sum(-1).tanh()) ** 2).mean()


def _lm_loss(model, gen):
    ids = torch.randint(0, 64, (4, 12), generator=gen)
    return model(ids, labels=ids).loss


# (model, loss, Adam learning rate): nn.Transformer's Xavier-initialised heads are ~6x larger than
# the HF models' N(0, 0.02) ones, so they need a larger step to move as far in a few steps
CASES = {"torch": (_torch_model, _torch_loss, 1e-2), "bert": (_bert, _lm_loss, 1e-3), "gpt2": (_gpt2, _lm_loss, 1e-3)}


def _train(kind, adapter_kw):
    make, loss_fn, lr = CASES[kind]
    torch.manual_seed(0)
    model = make()
    _collapse(model)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    heads = RepulsiveHeads(model, **adapter_kw) if adapter_kw is not None else None
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(model, gen)
        loss.backward()
        if heads is not None:
            info = heads.apply()
            assert len(info.groups) == 6 and not info.missing
            assert all(torch.isfinite(i.bandwidth) and i.bandwidth > 0 for i in info.groups.values())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    assert torch.isfinite(loss)
    return {name: d.summary() for name, d in head_diversity(model).items()}


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("adapter", [dict(preset=An2020()), dict(method="spos", preset=An2020(beta=0.01)),
                                     dict(method="svgd", posterior=Posterior(dataset_size=10, prior=1.0))],
                         ids=["an2020-svgd", "an2020-spos", "posterior-svgd"])
def test_training_with_adapter_moves_heads_apart(kind, adapter):
    plain = _train(kind, None)
    rep = _train(kind, adapter)
    assert list(plain) == list(rep) and len(rep) == 2
    for layer in plain:
        for role in ("q", "k", "v"):
            key = f"param_cos_{role}"
            assert plain[layer][key] > 0.9  # without repulsion the heads stay collapsed
            assert rep[layer][key] < plain[layer][key] - 0.02, (layer, key, plain[layer][key], rep[layer][key])
