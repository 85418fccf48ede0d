"""Training-step overhead of the repulsive-attention adapter on the MiniLM configuration (and, with
``--model llama-gqa``, on a Llama decoder of the same size with grouped-query attention; with
``--model small-transformer``, on the attention study's 2-layer, 8-head, width-128 BERT).

Model: BERT with the all-MiniLM-L6-v2 configuration (6 layers, 12 heads, hidden 384, intermediate
1536, vocabulary 30522), random initialisation (nothing downloaded), mean-pooled regression head,
AdamW. One training step = zero_grad, forward, backward, [adapter], optimizer step, on a batch of
``--batch`` x ``--seq`` tokens.

Steps with and without the adapter alternate on the same model and optimizer (A B B A ...), so
slow drifts of the machine hit both equally; the table reports medians, the ratio of the medians,
and, separately, the median time of ``RepulsiveHeads.apply()`` alone (timed on the gradients of
the step it belongs to), which is the overhead with the least noise. Both wall-clock time and the
process's CPU time are recorded: on a shared, oversubscribed machine the wall clock mostly measures
the other jobs, while the CPU time of a single-threaded run (``--threads 1``) measures the work.

Usage::

    python benchmarks/bench_adapter_overhead.py                       # CPU, 16 x 128, 9 pairs
    python benchmarks/bench_adapter_overhead.py --device cuda --batch 64
    python benchmarks/bench_adapter_overhead.py --profile             # where apply() spends its time
    python benchmarks/bench_adapter_overhead.py --spaces --tag spaces_minilm     # weights / circuits / outputs
    python benchmarks/bench_adapter_overhead.py --spaces --model small-transformer --tag spaces_small
    python benchmarks/bench_adapter_overhead.py --features --model small-transformer --tag features_small

``--spaces`` runs the paper preset (SVGD) in the three particle spaces of ``RepulsiveHeads(space=...)``
side by side, each against its own interleaved plain steps. In function space (``"outputs"``) part of
the work happens in the forward pass (the heads' outputs are compared and pulled back there), so the
step ratio, not ``apply()`` alone, is its overhead; its forward hooks are paused during the plain
steps. ``--features`` runs function space with each of ``features="outputs"``, ``"maps"`` and
``"both"`` side by side; the maps need eager attention, so it sets ``--attn eager`` (for all three and
their plain steps).

Writes ``benchmarks/results/adapter_overhead[ _<tag>].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attention_adapter import An2020, HeadSelection, Posterior, RepulsiveHeads  # noqa: E402


class MiniLMRegressor(nn.Module):
    def __init__(self, attn_implementation: str):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512,
                         attn_implementation=attn_implementation)
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(384, 1)

    def forward(self, ids, mask):
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled).squeeze(-1)


class GQADecoderRegressor(nn.Module):
    """A Llama-architecture decoder of the same size with grouped-query attention: 6 layers, hidden
    384, 12 query heads sharing 4 key/value heads (as Llama 2 70B / Mistral share 8 among 64 / 32),
    intermediate 1536, random initialisation; mean-pooled regression head like MiniLMRegressor."""

    def __init__(self, attn_implementation: str):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        cfg = LlamaConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                          num_key_value_heads=4, intermediate_size=1536, max_position_embeddings=512,
                          attn_implementation=attn_implementation)
        self.llama = LlamaModel(cfg)
        self.head = nn.Linear(384, 1)

    def forward(self, ids, mask):
        h = self.llama(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled).squeeze(-1)


class SmallTransformerRegressor(MiniLMRegressor):
    """The attention study's small transformer (benchmarks/attention/models.py): BERT, 2 layers, 8 heads,
    hidden 128, intermediate 512, random initialisation; vocabulary 30522 here, mean-pooled regression head."""

    def __init__(self, attn_implementation: str):
        nn.Module.__init__(self)
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                         intermediate_size=512, max_position_embeddings=512,
                         attn_implementation=attn_implementation)
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(128, 1)


MODELS = {"minilm": MiniLMRegressor, "llama-gqa": GQADecoderRegressor, "small-transformer": SmallTransformerRegressor}
MODEL_DESCRIPTIONS = {
    "small-transformer": "BERT, the attention study's small transformer (2 layers, 8 heads, hidden 128, "
                         "intermediate 512), random init",
    "minilm": "BERT MiniLM-L6 config (6 layers, 12 heads, hidden 384, intermediate 1536), random init",
    "llama-gqa": "Llama decoder (6 layers, 12 query / 4 key-value heads, hidden 384, intermediate 1536), random init",
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _adapter_options(name):
    return {
        "an2020-svgd": dict(preset=An2020(alpha=0.01, epsilon=0.01)),
        "an2020-spos": dict(method="spos", preset=An2020(alpha=0.01, epsilon=0.01, beta=0.01)),
        "principled-svgd": dict(method="svgd", posterior=Posterior(dataset_size=10_000, prior=1.0)),
        "joint-svgd": dict(method="svgd", selection=HeadSelection(particles="joint", include_output=True,
                                                             include_bias=True)),
        "circuits-svgd": dict(preset=An2020(alpha=0.01, epsilon=0.01), space="circuits"),
        "outputs-svgd": dict(preset=An2020(alpha=0.01, epsilon=0.01), space="outputs"),
        "maps-svgd": dict(preset=An2020(alpha=0.01, epsilon=0.01), space="outputs", features="maps"),
        "both-svgd": dict(preset=An2020(alpha=0.01, epsilon=0.01), space="outputs", features="both"),
    }[name]


#: ``--spaces``: the paper preset in each particle space
SPACE_ADAPTERS = ["an2020-svgd", "circuits-svgd", "outputs-svgd"]
#: ``--features``: function space with the heads' outputs, attention maps, or both
FEATURE_ADAPTERS = ["outputs-svgd", "maps-svgd", "both-svgd"]


def run(args):
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = MODELS[args.model](args.attn).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    adapter_threads = None if args.adapter_threads == 0 else args.adapter_threads
    heads = RepulsiveHeads(model, num_threads=adapter_threads, **_adapter_options(args.adapter))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30522, (args.batch, args.seq), generator=gen).to(device)
    mask = torch.ones(args.batch, args.seq, dtype=torch.long, device=device)
    target = torch.randn(args.batch, generator=gen).to(device)

    def clocks():
        _sync(device)
        return time.perf_counter(), time.process_time()

    def step(with_adapter):
        if heads._outputs is not None:  # function space: record the outputs only in the adapter's steps
            heads._outputs.enabled = with_adapter
        w0, c0 = clocks()
        opt.zero_grad(set_to_none=True)
        loss = ((model(ids, mask) - target) ** 2).mean()
        loss.backward()
        t_apply = None
        if with_adapter:
            a0, b0 = clocks()
            heads.apply()
            a1, b1 = clocks()
            t_apply = (a1 - a0, b1 - b0)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        w1, c1 = clocks()
        return (w1 - w0, c1 - c0), t_apply

    for i in range(args.warmup):
        step(i % 2 == 0)
    plain, rep, applies = [], [], []
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for w in order:
            t, a = step(w)
            (rep if w else plain).append(t)
            if a is not None:
                applies.append(a)
        print(f"pair {i + 1}/{args.pairs}: wall/cpu ms  without {plain[-1][0] * 1e3:8.1f}/{plain[-1][1] * 1e3:8.1f}"
              f"   with {rep[-1][0] * 1e3:8.1f}/{rep[-1][1] * 1e3:8.1f}"
              f"   apply {applies[-1][0] * 1e3:6.1f}/{applies[-1][1] * 1e3:6.1f}", flush=True)

    if args.profile:
        opt.zero_grad(set_to_none=True)
        ((model(ids, mask) - target) ** 2).mean().backward()
        with torch.profiler.profile() as prof:
            heads.apply()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    def med(v, k):
        return statistics.median(x[k] for x in v)

    med_plain, med_rep, med_apply = (med(v, 0) for v in (plain, rep, applies))
    cpu_plain, cpu_rep, cpu_apply = (med(v, 1) for v in (plain, rep, applies))
    groups = heads.groups
    return {
        "model": MODEL_DESCRIPTIONS[args.model],
        "adapter": args.adapter,
        "space": heads.space if heads.space != "outputs" or heads.features == "outputs"
        else f"outputs ({heads.features})",
        "adapter_options": {k: v if isinstance(v, (str, int, float)) else repr(v)
                            for k, v in _adapter_options(args.adapter).items()},
        "particle_groups": len(groups),
        "group_shape": [groups[0].num_particles, groups[0].dim],
        "batch": args.batch,
        "seq": args.seq,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "adapter_threads": heads.num_threads,
        "attn_implementation": args.attn,
        "pairs": args.pairs,
        "median_step_without_s": med_plain,
        "median_step_with_s": med_rep,
        "ratio_with_over_without": med_rep / med_plain,
        "median_apply_s": med_apply,
        "apply_fraction_of_step": med_apply / med_plain,
        "cpu_median_step_without_s": cpu_plain,
        "cpu_median_step_with_s": cpu_rep,
        "cpu_ratio_with_over_without": cpu_rep / cpu_plain,
        "cpu_median_apply_s": cpu_apply,
        "cpu_apply_fraction_of_step": cpu_apply / cpu_plain,
        "steps_without_wall_cpu_s": plain,
        "steps_with_wall_cpu_s": rep,
        "apply_wall_cpu_s": applies,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _table(results):
    rows = ["| adapter | space | groups | device | threads (apply) | batch | clock | step without (ms) | step with (ms) "
            "| ratio | apply() (ms) | apply / step |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for clock, pre in (("wall", ""), ("cpu", "cpu_")):
            rows.append(
                f"| {r['adapter']} | {r.get('space', 'weights')} | {r['particle_groups']} x {r['group_shape'][0]} "
                f"x {r['group_shape'][1]} | {r['device']} | {r['threads']} ({r['adapter_threads'] or 'same'}) "
                f"| {r['batch']} x {r['seq']} | {clock} "
                f"| {r[pre + 'median_step_without_s'] * 1e3:.1f} | {r[pre + 'median_step_with_s'] * 1e3:.1f} "
                f"| {r[pre + 'ratio_with_over_without']:.3f} | {r[pre + 'median_apply_s'] * 1e3:.2f} "
                f"| {100 * r[pre + 'apply_fraction_of_step']:.2f}% |"
            )
    return rows


def markdown(results):
    """One table per model (in the order first seen); each row a run, interleaved with its own plain steps."""
    by_model = {}
    for r in results:  # one table per model and run (a --combine input file is one run)
        by_model.setdefault((r["model"], r.get("run", "")), []).append(r)
    parts = []
    for (model, run_name), rs in by_model.items():
        r0 = rs[0]
        loads = ", ".join(f"{r['load_average_at_end'][0]:.1f}" for r in rs if r.get("load_average_at_end"))
        attn = "; eager attention" if r0.get("attn_implementation") == "eager" else ""
        head = (f"Adapter overhead, {model}{f' (run {run_name})' if run_name else ''}{attn}; 'groups': particle groups x "
                f"heads x parameters per particle; "
                f"medians of {r0['pairs']} interleaved pairs of training steps (AdamW, clipping); torch {r0['torch']}, "
                f"{r0['cpu_count']} CPUs; 1-minute load average at the end of each run: {loads}. 'threads (apply)': "
                f"torch intra-op threads for the step (and for apply()); 'cpu' rows are process CPU time.")
        parts.append(head + "\n\n" + "\n".join(_table(rs)) + "\n")
    return "\n".join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="minilm", choices=sorted(MODELS),
                   help="minilm: BERT MiniLM configuration; llama-gqa: Llama decoder, 12 query / 4 key-value heads")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--pairs", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--adapter-threads", type=int, default=1,
                   help="RepulsiveHeads(num_threads=...) for apply() (0: keep torch's setting)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--adapter", nargs="+", default=["an2020-svgd", "an2020-spos"],
                   choices=["an2020-svgd", "an2020-spos", "principled-svgd", "joint-svgd", "circuits-svgd",
                            "outputs-svgd", "maps-svgd", "both-svgd"])
    p.add_argument("--spaces", action="store_true", help=f"run {SPACE_ADAPTERS} (one run, side by side)")
    p.add_argument("--features", action="store_true",
                   help=f"run {FEATURE_ADAPTERS} with --attn eager (one run, side by side)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the output files")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="no run: merge the results of earlier runs (their .json files) into one table")
    args = p.parse_args(argv)
    if args.spaces:
        args.adapter = SPACE_ADAPTERS
    if args.features:
        args.adapter, args.attn = FEATURE_ADAPTERS, "eager"
    results = []
    if args.combine:
        for f in args.combine:
            results.extend({**r, "run": r.get("run") or Path(f).stem} for r in json.loads(Path(f).read_text()))
    else:
        for name in args.adapter:
            one = argparse.Namespace(**{**vars(args), "adapter": name})
            print(f"== {name} ==", flush=True)
            results.append(run(one))
    md = markdown(results)
    print()
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "adapter_overhead" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out / f"{stem}.md").write_text(md)
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
