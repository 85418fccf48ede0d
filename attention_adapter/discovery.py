"""Find the attention modules of a model and bind a head layout to each.

Discovery walks ``model.named_modules()`` in order (each module object once, so a module used
several times per step is counted once) and matches, first, the user's ``layouts`` and then the
built-in ones:

========================================  ======================================================
module                                    matched by
========================================  ======================================================
``torch.nn.MultiheadAttention``           type (covers ``nn.Transformer*`` layers)
Hugging Face ``BertAttention``-like       a ``.self`` with ``query``/``key``/``value`` Linear and
                                          ``num_attention_heads``, and ``.output.dense`` Linear
Hugging Face ``BertSelfAttention``-like   ``query``/``key``/``value`` Linear, ``num_attention_heads``
Hugging Face ``GPT2Attention``-like       ``c_attn``/``c_proj`` (Conv1D, ``in x out``), ``num_heads``
========================================  ======================================================

When a module matches, its sub-modules are not searched further (a BERT ``attention`` wrapper owns
its ``.self``). ``layouts`` maps a module class (or a predicate ``module -> bool``) to a
:class:`~attention_adapter.layouts.HeadLayout` or to a factory ``module -> HeadLayout``.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from .layouts import (
    HeadLayout,
    ResolvedLayout,
    bert_attention_layout,
    bert_self_attention_layout,
    gpt2_attention_layout,
    multihead_attention_layout,
    resolve_layout,
)

__all__ = ["find_attention", "select_layers", "describe_attention", "unwrap_model", "BUILTIN_LAYOUTS"]

Matcher = Union[type, Callable[[nn.Module], bool]]
LayoutSpec = Union[HeadLayout, Callable[[nn.Module], HeadLayout]]


def _is_linear(m: Any) -> bool:
    return isinstance(m, nn.Linear)


def _is_bert_self(m: nn.Module) -> bool:
    return (
        all(_is_linear(getattr(m, a, None)) for a in ("query", "key", "value"))
        and isinstance(getattr(m, "num_attention_heads", None), int)
    )


def _is_bert_wrapper(m: nn.Module) -> bool:
    inner = getattr(m, "self", None)
    out = getattr(m, "output", None)
    return (
        isinstance(inner, nn.Module)
        and _is_bert_self(inner)
        and isinstance(out, nn.Module)
        and _is_linear(getattr(out, "dense", None))
        and out.dense.in_features == inner.value.out_features
    )


def _is_conv1d(m: Any) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(m, nn.Module) and type(m).__name__ == "Conv1D" and isinstance(w, nn.Parameter) and w.dim() == 2


def _is_gpt2(m: nn.Module) -> bool:
    if not (_is_conv1d(getattr(m, "c_attn", None)) and _is_conv1d(getattr(m, "c_proj", None))):
        return False
    e = getattr(m, "embed_dim", None)
    if not isinstance(e, int) or not isinstance(getattr(m, "num_heads", None), int):
        return False
    width = 2 * e if hasattr(m, "q_attn") else 3 * e
    return tuple(m.c_attn.weight.shape) == (e, width)


#: built-in (matcher, layout factory) pairs, tried in this order after the user's layouts
BUILTIN_LAYOUTS: Tuple[Tuple[Callable[[nn.Module], bool], Callable[[nn.Module], HeadLayout]], ...] = (
    (lambda m: isinstance(m, nn.MultiheadAttention), multihead_attention_layout),
    (_is_bert_wrapper, bert_attention_layout),
    (_is_bert_self, bert_self_attention_layout),
    (_is_gpt2, gpt2_attention_layout),
)


def _user_matchers(layouts: Optional[Mapping[Matcher, LayoutSpec]]):
    if layouts is None:
        return []
    if not isinstance(layouts, Mapping):
        raise TypeError(
            f"expected layouts as a mapping {{module class or predicate: HeadLayout or factory}}, "
            f"received {type(layouts).__name__}"
        )
    out = []
    for key, spec in layouts.items():
        if isinstance(key, type):
            if not issubclass(key, nn.Module):
                raise TypeError(f"expected a layouts key that is an nn.Module subclass, received {key!r}")
            match = (lambda cls: (lambda m: isinstance(m, cls)))(key)
        elif callable(key):
            match = key
        else:
            raise TypeError(f"expected a layouts key that is a module class or a predicate, received {key!r}")
        if isinstance(spec, HeadLayout):
            factory = (lambda lay: (lambda m: lay))(spec)
        elif callable(spec):
            factory = spec
        else:
            raise TypeError(
                f"expected a layouts value that is a HeadLayout or a factory module -> HeadLayout, received {spec!r}"
            )
        out.append((match, factory))
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel``, ``DataParallel`` or ``torch.compile`` wrappers.

    Discovery names modules relative to the unwrapped model, so an adapter built on a DDP model
    and one built on the plain model have the same group names (and exchange state dicts).
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def find_attention(model: nn.Module, layouts: Optional[Mapping[Matcher, LayoutSpec]] = None,
                   *, builtin: bool = True, required: bool = True) -> List[ResolvedLayout]:
    """Find every attention module of ``model`` and resolve its head layout.

    Parameters
    ----------
    model : nn.Module
    layouts : mapping, optional
        ``{module class or predicate: HeadLayout or factory(module) -> HeadLayout}``; tried before
        the built-in layouts.
    builtin : bool
        Whether to try the built-in layouts (``nn.MultiheadAttention``, BERT family, GPT-2).
    required : bool
        If true (default), finding nothing is a ValueError.

    Returns
    -------
    list of ResolvedLayout, in ``named_modules`` order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected model as a torch.nn.Module, received {type(model).__name__}")
    model = unwrap_model(model)
    matchers = _user_matchers(layouts) + (list(BUILTIN_LAYOUTS) if builtin else [])
    found: List[ResolvedLayout] = []
    covered: List[str] = []
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") or c == "" for c in covered):
            continue
        for match, factory in matchers:
            if match(module):
                layout = factory(module)
                found.append(resolve_layout(name, module, layout))
                covered.append(name)
                break
    if required and not found:
        raise ValueError(
            f"expected at least one attention module in {type(model).__name__}, found none. Built-in layouts "
            "cover torch.nn.MultiheadAttention (nn.Transformer*), Hugging Face BERT-family attention "
            "(query/key/value Linear) and GPT-2 attention (c_attn Conv1D); describe other modules with "
            "layouts={MyAttention: HeadLayout(num_heads=..., q=..., k=..., v=...)}"
        )
    return found


def select_layers(sites: Sequence[ResolvedLayout], layers: Any = None) -> List[ResolvedLayout]:
    """Keep a subset of the discovered attention modules.

    Parameters
    ----------
    sites : sequence of ResolvedLayout
    layers : None, int, str, iterable of int/str, or callable
        ``None`` keeps all. Ints index the discovered modules in order (negative from the end);
        strings are module names or ``fnmatch`` patterns (``"encoder.layer.1*"``); a callable
        ``(name, module) -> bool`` filters.
    """
    sites = list(sites)
    if layers is None:
        return sites
    if callable(layers) and not isinstance(layers, (str, type)):
        kept = [s for s in sites if layers(s.name, s.module)]
    else:
        items = [layers] if isinstance(layers, (int, str)) else list(layers) if isinstance(layers, Iterable) else None
        if items is None:
            raise TypeError(
                f"expected layers as None, an int, a name pattern, a list of those or a callable; received {layers!r}"
            )
        keep = set()
        for it in items:
            if isinstance(it, bool) or not isinstance(it, (int, str)):
                raise TypeError(f"expected layer selectors as ints or name patterns, received {it!r}")
            if isinstance(it, int):
                if not -len(sites) <= it < len(sites):
                    raise ValueError(
                        f"layer index {it} out of range: {len(sites)} attention modules were found"
                    )
                keep.add(it % len(sites))
            else:
                hits = [i for i, s in enumerate(sites) if s.name == it or fnmatch.fnmatchcase(s.name, it)]
                if not hits:
                    names = ", ".join(repr(s.name) for s in sites)
                    raise ValueError(f"layer pattern {it!r} matches no attention module; found: {names}")
                keep.update(hits)
        kept = [s for i, s in enumerate(sites) if i in keep]
    if not kept:
        raise ValueError(f"the layer selection {layers!r} keeps none of the {len(sites)} attention modules")
    return kept


def describe_attention(model: nn.Module, layouts: Optional[Mapping[Matcher, LayoutSpec]] = None) -> str:
    """A readable report of the attention modules found in ``model`` and their head layouts."""
    sites = find_attention(model, layouts, required=False)
    if not sites:
        return f"{type(model).__name__}: no attention module found"
    lines = [f"{type(model).__name__}: {len(sites)} attention module(s)"]
    for i, s in enumerate(sites):
        lines.append(f"[{i}] {s.name or '<root>'}: {type(s.module).__name__}, {s.num_heads} heads, {s.kind}")
        lines.append(s.describe())
    return "\n".join(lines)
