"""Find the attention modules of a model and bind a head layout to each.

Discovery walks ``model.named_modules()`` in order (each module object once, so a module used
several times per step is counted once) and matches, first, the user's ``layouts``, then the
built-in routes of :mod:`attention_adapter.families` (one per model family:
``nn.MultiheadAttention``, GPT-2's ``Conv1D`` attention, BERT-style wrappers with
``.output.dense``, and any module with ``nn.Linear`` Q/K/V projections read from its structure and
config).

When a module matches, its sub-modules are not searched further (a BERT ``attention`` wrapper owns
its ``.self``). A module that looks like attention (:func:`~attention_adapter.families.looks_like_attention`)
but cannot be resolved is an error naming the module and what was missing (``strict=True``), and is
listed by :func:`describe_attention`. Each site is labelled ``"self"``, ``"cross"`` or
``"decoder_self"`` (:func:`~attention_adapter.families.attention_kind`) and can be selected by kind
(:func:`select_layers`). ``layouts`` maps a module class (or a predicate ``module -> bool``) to a
:class:`~attention_adapter.layouts.HeadLayout` or to a factory ``module -> HeadLayout``.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from torch import nn

from .families import (
    BUILTIN_LAYOUTS,
    LayoutNotFound,
    attention_kind,
    looks_like_attention,
    structural_layout,
    wrapper_layout,
)
from .layouts import ATTENTION_KINDS, HeadLayout, ResolvedLayout, resolve_layout

__all__ = ["find_attention", "select_layers", "describe_attention", "unwrap_model", "BUILTIN_LAYOUTS",
           "unresolved_attention"]

Matcher = Union[type, Callable[[nn.Module], bool]]
LayoutSpec = Union[HeadLayout, Callable[[nn.Module], HeadLayout]]


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


def _is_peft_model(model: nn.Module) -> bool:
    # duck-typed so that peft stays optional: peft.PeftModel (and its task subclasses) hold the
    # tuner in .base_model (LoraModel, ...), which holds the transformers model in .model
    return (type(model).__module__.startswith("peft.") and callable(getattr(model, "get_base_model", None))
            and isinstance(getattr(getattr(model, "base_model", None), "model", None), nn.Module))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel``, ``DataParallel``, ``torch.compile`` and PEFT wrappers.

    Unwraps, repeatedly and in any nesting: ``DistributedDataParallel`` / ``DataParallel``
    (``.module``), ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``) and ``peft.PeftModel``
    (``.get_base_model()``, the transformers model with the LoRA layers injected in place).
    Discovery names modules relative to the unwrapped model, so an adapter built on a wrapped model
    and one built on the plain model have the same group names (and exchange state dicts). The
    parameters are the same objects: gradients written through the unwrapped model are the ones the
    wrapper's optimizer sees.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, received {type(model).__name__}")
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif _is_peft_model(model):
            model = model.get_base_model()
        else:
            return model


def _walk(model: nn.Module, layouts, builtin: bool):
    """``(found, unresolved)``: resolved sites, and ``{name: reason}`` for attention-like modules left."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected model as a torch.nn.Module, received {type(model).__name__}")
    model = unwrap_model(model)
    user = _user_matchers(layouts)
    matchers = user + (list(BUILTIN_LAYOUTS) if builtin else [])
    config = getattr(model, "config", None)
    encoder_decoder = isinstance(model, nn.Transformer) or getattr(config, "is_encoder_decoder", None) is True
    parents: Dict[str, nn.Module] = {}
    found: List[ResolvedLayout] = []
    unresolved: Dict[str, str] = {}
    covered: List[str] = []
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") or c == "" for c in covered):
            continue
        for child_name, _ in module.named_children():
            parents[f"{name}.{child_name}" if name else child_name] = module
        layout = None
        for match, factory in matchers:
            if match(module):
                layout = factory(module)
                break
        if layout is None and builtin:
            # a wrapper does not claim an inner module the user described
            if not any(match(child) for child in module.children() for match, _ in user):
                layout = wrapper_layout(module, config)
            if layout is None and looks_like_attention(module) is not None:
                try:
                    layout = structural_layout(module, config)
                except LayoutNotFound as err:
                    unresolved[name] = str(err)
                    continue
        if layout is not None:
            kind = attention_kind(name, module, config, parents.get(name), encoder_decoder)
            found.append(resolve_layout(name, module, layout, kind))
            covered.append(name)
    return found, unresolved


def find_attention(model: nn.Module, layouts: Optional[Mapping[Matcher, LayoutSpec]] = None,
                   *, builtin: bool = True, required: bool = True, strict: bool = True) -> List[ResolvedLayout]:
    """Find every attention module of ``model`` and resolve its head layout.

    Parameters
    ----------
    model : nn.Module
    layouts : mapping, optional
        ``{module class or predicate: HeadLayout or factory(module) -> HeadLayout}``; tried before
        the built-in layouts.
    builtin : bool
        Whether to try the built-in layouts (``nn.MultiheadAttention``, GPT-2, wrappers and the
        structural rule of :func:`~attention_adapter.families.structural_layout`).
    required : bool
        If true (default), finding nothing is a ValueError.
    strict : bool
        If true (default), a module that looks like attention but could not be resolved is a
        ValueError naming it and what was missing; if false it is left out (see
        :func:`unresolved_attention`).

    Returns
    -------
    list of ResolvedLayout, in ``named_modules`` order, each labelled ``attention`` =
    ``"self"``, ``"cross"`` or ``"decoder_self"``.
    """
    found, unresolved = _walk(model, layouts, builtin)
    if strict and unresolved:
        items = "; ".join(f"{n or '<root>'!r}: {why}" for n, why in unresolved.items())
        raise ValueError(
            f"expected every attention-like module to have a head layout; {len(unresolved)} could not be "
            f"resolved: {items}. Describe them with layouts={{MyAttention: HeadLayout(num_heads=..., q=..., "
            "k=..., v=...)}, or pass strict=False to leave them out"
        )
    if required and not found:
        raise ValueError(
            f"expected at least one attention module in {type(model).__name__}, found none. Built-in layouts "
            "cover torch.nn.MultiheadAttention (nn.Transformer*), GPT-2 attention (c_attn Conv1D) and any module "
            "with separate (q_proj/k_proj/v_proj, q/k/v, query/key/value, q_lin/..., Wq/...) or fused (c_attn, qkv, "
            "query_key_value, Wqkv, qkv_proj) projections and a head count among its attributes or config; "
            "describe other modules with layouts={MyAttention: HeadLayout(num_heads=..., q=..., k=..., v=...)}"
        )
    return found


def unresolved_attention(model: nn.Module, layouts: Optional[Mapping[Matcher, LayoutSpec]] = None) -> Dict[str, str]:
    """``{module name: reason}`` for the modules that look like attention but have no layout."""
    return _walk(model, layouts, True)[1]


def select_layers(sites: Sequence[ResolvedLayout], layers: Any = None,
                  kinds: Any = None) -> List[ResolvedLayout]:
    """Keep a subset of the discovered attention modules.

    Parameters
    ----------
    sites : sequence of ResolvedLayout
    layers : None, int, str, iterable of int/str, or callable
        ``None`` keeps all. Ints index the discovered modules in order (negative from the end);
        strings are module names or ``fnmatch`` patterns (``"encoder.layer.1*"``); a callable
        ``(name, module) -> bool`` filters.
    kinds : None, str or iterable of str
        Keep only sites of these attention kinds (``"self"``, ``"cross"``, ``"decoder_self"``),
        applied before ``layers`` (so ints index the sites of the kept kinds). ``None`` keeps all.
    """
    sites = list(sites)
    if kinds is not None:
        wanted = (kinds,) if isinstance(kinds, str) else tuple(kinds) if isinstance(kinds, Iterable) else None
        if not wanted or any(k not in ATTENTION_KINDS for k in wanted):
            raise ValueError(f"expected kinds as None or a non-empty subset of {ATTENTION_KINDS}, received {kinds!r}")
        total = len(sites)
        sites = [s for s in sites if s.attention in wanted]
        if not sites:
            raise ValueError(f"the kind selection {tuple(wanted)!r} keeps none of the {total} attention modules")
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
    """A readable report of the attention modules found in ``model``, their kind and head layouts,
    and the modules that look like attention but were not resolved (with the reason)."""
    sites, unresolved = _walk(model, layouts, True)
    lines = []
    if not sites:
        lines.append(f"{type(model).__name__}: no attention module found")
    else:
        counts = {k: sum(s.attention == k for s in sites) for k in ATTENTION_KINDS}
        lines.append(f"{type(model).__name__}: {len(sites)} attention module(s) ("
                     + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + ")")
    for i, s in enumerate(sites):
        lines.append(f"[{i}] {s.name or '<root>'}: {type(s.module).__name__}, {s.attention}, {s.heads_text()}, "
                     f"{s.description}")
        lines.append(s.describe())
    for n, why in unresolved.items():
        lines.append(f"not resolved: {n or '<root>'}: {why}")
    return "\n".join(lines)
