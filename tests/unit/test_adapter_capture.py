"""What HeadCapture measures: the tensors each layout names, never a tensor whose shape happens to fit.

Regressions: a diffusers-style output projection (``to_out = ModuleList([Linear, Dropout])``) was not
found, and the already projected module output was split into fake "heads"; T5's attention returns
``(attn_output, position_bias, attn_weights)`` and the position bias, the first 4-D tensor with ``M``
on axis 1, was taken for the attention maps.
"""

import pytest
import torch
from torch import nn

from attention_adapter import HeadCapture, HeadLayout, find_attention
from attention_adapter.families import structural_layout

pytestmark = pytest.mark.usefixtures("torch_one_thread")

E, H, B, T = 12, 3, 2, 5
D = E // H


class DiffusersStyleAttention(nn.Module):
    """``to_q/to_k/to_v`` and ``to_out = ModuleList([Linear, Dropout])``, as in diffusers' ``Attention``."""

    def __init__(self, to_out=None):
        super().__init__()
        self.heads = H
        self.to_q, self.to_k, self.to_v = (nn.Linear(E, E, bias=False) for _ in range(3))
        self.to_out = to_out if to_out is not None else nn.ModuleList([nn.Linear(E, E), nn.Dropout(0.0)])

    def per_head(self, x):
        """``(B, T, M, d)`` attention-weighted values and ``(B, M, T, T)`` maps, computed here."""
        q, k, v = (w(x).view(B, T, H, D).transpose(1, 2) for w in (self.to_q, self.to_k, self.to_v))
        maps = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, -1)
        return (maps @ v).transpose(1, 2), maps

    def forward(self, x):
        ctx, maps = self.per_head(x)
        y = ctx.reshape(B, T, E)
        for layer in self.to_out:
            y = layer(y)
        return y, maps


def _x():
    return torch.randn(B, T, E, generator=torch.Generator().manual_seed(3))


def test_output_projection_inside_a_container_is_resolved_and_its_input_recorded():
    torch.manual_seed(0)
    module = DiffusersStyleAttention()
    (site,) = find_attention(module)
    assert site.blocks["out"].name == "to_out.0.weight" and site.blocks["out"].axis == 1
    assert site.head_outputs == "out_projection_input"
    x = _x()
    cap = HeadCapture([site]).run(lambda: module(x))
    want_out, want_maps = module.per_head(x)
    torch.testing.assert_close(cap.outputs[""], want_out.detach())
    torch.testing.assert_close(cap.maps[""], want_maps.detach())


def test_an_output_projection_that_is_not_found_records_no_head_outputs():
    """A projection the layout does not name (a two-layer MLP here) must not be split into heads."""
    torch.manual_seed(0)
    module = DiffusersStyleAttention(nn.Sequential(nn.Linear(E, E), nn.GELU(), nn.Linear(E, E)))
    layout = structural_layout(module)
    assert layout.out is None and layout.head_outputs is None
    (site,) = find_attention(module)
    cap = HeadCapture([site]).run(lambda: module(_x()))
    assert "" not in cap.outputs
    torch.testing.assert_close(cap.maps[""], module.per_head(_x())[1].detach())


class SelfOnly(nn.Module):
    """A BERT-style ``.self``: Q/K/V only, returns the concatenated head outputs and the maps."""

    def __init__(self):
        super().__init__()
        self.num_heads = H
        self.query, self.key, self.value = (nn.Linear(E, E) for _ in range(3))
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        q, k, v = (w(x).view(B, T, H, D).transpose(1, 2) for w in (self.query, self.key, self.value))
        maps = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, -1)
        return (self.dropout(maps) @ v).transpose(1, 2).reshape(B, T, E), maps


def test_a_module_without_output_projection_records_its_own_output_as_head_outputs():
    torch.manual_seed(0)
    module = SelfOnly()
    (site,) = find_attention(module)
    assert "out" not in site.blocks and site.head_outputs == "module_output" and site.attention_map == 1
    x = _x()
    cap = HeadCapture([site]).run(lambda: module(x))
    ctx, maps = module(x)
    torch.testing.assert_close(cap.outputs[""], ctx.detach().reshape(B, T, H, D))
    torch.testing.assert_close(cap.maps[""], maps.detach())


def test_attention_map_position_is_the_layouts_choice():
    torch.manual_seed(0)
    module = DiffusersStyleAttention()
    x = _x()
    lay = dict(num_heads=H, q="to_q.weight", k="to_k.weight", v="to_v.weight", out=("to_out.0.weight", 1))
    for index, recorded in ((1, True), (None, False), (0, False)):  # output 0 is (B, T, E): not a map
        (site,) = find_attention(module, {DiffusersStyleAttention: HeadLayout(**lay, attention_map=index)})
        cap = HeadCapture([site]).run(lambda: module(x))
        assert ("" in cap.maps) is recorded
    with pytest.raises(ValueError, match="attention_map as a non-negative int or None, received -1"):
        HeadLayout(**lay, attention_map=-1)
    with pytest.raises(ValueError, match="head_outputs in"):
        HeadLayout(**lay, head_outputs="context")
    with pytest.raises(ValueError, match="an out block with head_outputs='out_projection_input'"):
        HeadLayout(num_heads=H, q="to_q.weight", head_outputs="out_projection_input")


def test_t5_maps_are_the_attention_weights_not_the_position_bias():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_decoder_layers=1,
                                num_heads=4, decoder_start_token_id=0, attn_implementation="eager")
    model = transformers.T5Model(cfg).eval()
    sites = find_attention(model)
    assert {s.attention_map for s in sites} == {2}
    ids = torch.tensor([[1, 5, 7, 2, 9]])
    dec = torch.tensor([[0, 3, 4]])
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=dec, output_attentions=True)
    cap = HeadCapture(sites).run(lambda: model(input_ids=ids, decoder_input_ids=dec))
    torch.testing.assert_close(cap.maps["encoder.block.0.layer.0.SelfAttention"], out.encoder_attentions[0])
    torch.testing.assert_close(cap.maps["decoder.block.0.layer.0.SelfAttention"], out.decoder_attentions[0])
    torch.testing.assert_close(cap.maps["decoder.block.0.layer.1.EncDecAttention"], out.cross_attentions[0])


def test_layout_kind_is_a_deprecated_alias_of_description():
    with pytest.warns(DeprecationWarning, match=r"HeadLayout\(kind=...\) is deprecated"):
        lay = HeadLayout(num_heads=H, q="to_q.weight", kind="my attention")
    assert lay.description == "my attention"
    (site,) = find_attention(DiffusersStyleAttention(), {DiffusersStyleAttention: lay})
    with pytest.warns(DeprecationWarning, match="ResolvedLayout.kind is deprecated"):
        assert site.kind == "my attention"
    with pytest.raises(TypeError, match="received both description= and its deprecated alias kind="):
        HeadLayout(num_heads=H, q="to_q.weight", kind="a", description="b")


def test_conv1d_outside_the_gpt2_route_is_refused_with_the_reason():
    """GPT-2's Conv1D has one route (gpt2_attention_layout); the structural rule reads nn.Linear only."""
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    class NotQuiteGPT2(nn.Module):  # no embed_dim: not GPT-2 attention
        def __init__(self):
            super().__init__()
            self.num_heads = H
            self.c_attn, self.c_proj = Conv1D(3 * E, E), Conv1D(E, E)

    with pytest.raises(ValueError, match="expected c_attn as nn.Linear, received Conv1D; Conv1D is read only as "
                                         "GPT-2 attention"):
        find_attention(NotQuiteGPT2())
    module = NotQuiteGPT2()
    module.embed_dim = E
    (site,) = find_attention(module)
    assert site.description == "GPT-2 attention (fused c_attn Conv1D, in x out)" and site.blocks["q"].axis == 1


def test_function_space_reads_the_head_outputs_the_layout_names_or_refuses():
    """The output-space adapter reads head outputs through the same layout fields as HeadCapture."""
    from attention_adapter import RepulsiveHeads

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="names no output projection .* cannot be read in function space"):
        RepulsiveHeads(DiffusersStyleAttention(nn.Sequential(nn.Linear(E, E), nn.GELU(), nn.Linear(E, E))),
                       "svgd", space="outputs")
    module = DiffusersStyleAttention()
    heads = RepulsiveHeads(module, "svgd", space="outputs", tokens=4)
    module.train()
    module(_x())[0].pow(2).mean().backward()
    info = heads.apply()
    assert len(info.groups) == 1 and not info.skipped
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
