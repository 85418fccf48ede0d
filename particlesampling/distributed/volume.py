"""Bytes moved by one sharded Stein direction (or SVGD / SPOS step), and how that grows with the ranks.

The collectives are listed in :mod:`particlesampling.distributed.direction`; this module counts
their payloads. Two numbers per collective and rank: the payload it contributes (``sent``) and the
payload it ends up with (``received``, its own share included), which is what an all-gather or
all-reduce call reads and writes whatever the algorithm. What travels on the wire depends on the
algorithm; for the ring algorithms of gloo and NCCL each rank sends and receives
``(W - 1) / W`` of an all-gather's result and ``2 (W - 1) / W`` of an all-reduce's payload
(``wire``).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

from .. import validation

__all__ = ["communication_volume", "radix_passes", "HISTOGRAM_BINS", "CollectiveCounter"]

#: bins of one radix-selection histogram (:mod:`particlesampling.selection`: 16 bits per pass)
HISTOGRAM_BINS = 1 << 16


def radix_passes(itemsize: int) -> int:
    """All-reduces of histograms per exact median: 16 bits per pass, 2 for float32, 4 for float64."""
    return 2 if itemsize == 4 else 4


def communication_volume(sizes: Sequence[int], d: int, itemsize: int, *, median: bool = True,
                         kept: int | None = None, histograms: int | None = None,
                         method: str = "direction") -> Dict[str, float]:
    """Collective payloads per rank of one sharded direction or step, in bytes.

    Parameters
    ----------
    sizes : sequence of int
        Rows per rank (``n_r``); ``W = len(sizes)``, ``n = sum(sizes)``.
    d : int
        Dimension of a particle.
    itemsize : int
        Bytes per number: 4 (float32) or 8 (float64).
    median : bool
        Whether the bandwidth is a median rule (the exchanges of
        :func:`particlesampling.distributed.direction.median_regime`), or a fixed one
        (none).
    kept : int, optional
        Bracketing regime: the largest number of values one rank keeps inside the bracket (the
        kept values' all-gather is padded to it; a property of the data). Default: the expected
        number, ``expected_bracket_values`` shared in proportion to the largest shard.
    histograms : int, optional
        The histograms the radix passes carry in all, if they ran (the radix regime, or a bracket
        that missed: then no values are gathered): one per pass for a median of one rank
        (``"an2020"``), and for a midpoint median one in the first pass and one or two in each
        later pass, depending on whether the two ranks still share a bin. Default: none in the
        gather and bracket regimes; the upper bound ``1 + 2 (passes - 1)`` in the radix regime.
    method : {"direction", "svgd", "spos"}
        A direction alone; an SVGD step (+ the step information: an all-reduce of 4 numbers); an SPOS
        step (+ one more exchange of the row counts, for the noise offset).

    Returns
    -------
    dict with ``sent``, ``received`` (payloads, bytes), ``wire`` (ring-algorithm bytes sent, equal
    to those received, per rank), ``collectives`` (calls), and the parts: ``rows`` (received by the
    all-gather of particles and scores), ``median`` (received by the median's all-gathers),
    ``histograms`` (bytes of the histogram all-reduces), ``small`` (row counts and sums).
    """
    from ..selection import bracket_sample_size, expected_bracket_values
    from .direction import median_regime, sample_shares

    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 0 or sum(sizes) < 1:
        raise ValueError(f"expected row counts >= 0 with at least one particle, received {sizes!r}")
    if itemsize not in (4, 8):
        raise ValueError(f"expected itemsize 4 (float32) or 8 (float64), received {itemsize!r}")
    if method not in ("direction", "svgd", "spos"):
        raise ValueError(f"expected method 'direction', 'svgd' or 'spos', received {method!r}")
    w, m, n = len(sizes), max(sizes), sum(sizes)
    regime = median_regime(n) if median and n > 1 else None
    passes = radix_passes(itemsize)
    most = 1 + 2 * (passes - 1)
    if histograms is not None and (isinstance(histograms, bool) or not isinstance(histograms, int)
                                   or not (histograms == 0 or passes <= histograms <= most)):
        raise ValueError(f"expected histograms as 0 or an integer in [{passes}, {most}] for {passes} radix "
                         f"passes, received {histograms!r}")
    if histograms and regime not in ("bracket", "radix"):
        raise ValueError(f"expected no histograms for {n} particles ({regime or 'no median'}), received {histograms}")
    if histograms is None:
        histograms = most if regime == "radix" else 0
    kept = validation.check_int("kept", kept, minimum=0, optional=True)
    ring_gather, ring_reduce = (w - 1) / w, 2.0 * (w - 1) / w
    counts = (8, 8 * w)  # (sent, received) of one all-gather of the row counts
    rows = (2 * m * d * itemsize, 2 * w * m * d * itemsize)
    gathers = [counts, rows]
    median_gathers = []
    if regime == "gather":
        median_gathers = [(16, 16 * w), (m * n * itemsize, w * m * n * itemsize)]
    elif regime == "bracket":
        share = max(sample_shares(sizes, n * n))
        median_gathers = [(share * itemsize, w * share * itemsize), (16, 16 * w)]
        if not histograms:  # the bracket held: its kept values are gathered
            if kept is None:
                kept = math.ceil(expected_bracket_values(bracket_sample_size(n * n), n * n, [n * n // 2]) * m / n)
            median_gathers.append((kept * itemsize, w * kept * itemsize))
    gathers += median_gathers
    reduces = [3 * itemsize]  # the direction's info sums
    if histograms:
        reduces.append(histograms * HISTOGRAM_BINS * 8)
    if method in ("svgd", "spos"):
        reduces.append(4 * itemsize)  # the step information
    if method == "spos":
        gathers.append(counts)  # the noise offset
    sent = sum(g[0] for g in gathers) + sum(reduces)
    received = sum(g[1] for g in gathers) + sum(reduces)
    wire = sum(g[1] for g in gathers) * ring_gather + sum(reduces) * ring_reduce
    hist_bytes = histograms * HISTOGRAM_BINS * 8
    median_bytes = sum(g[1] for g in median_gathers)
    calls = len(gathers) + len(reduces) - (1 if histograms else 0) + (passes if histograms else 0)
    return {"sent": float(sent), "received": float(received), "wire": float(math.ceil(wire)),
            "collectives": calls, "rows": float(rows[1]), "median": float(median_bytes),
            "histograms": float(hist_bytes), "small": float(received - rows[1] - median_bytes - hist_bytes)}


class CollectiveCounter:
    """Context manager measuring the payloads of this process's collectives, to set beside
    :func:`communication_volume`.

    While active it wraps ``torch.distributed.all_gather_into_tensor``, ``all_gather_single`` (where
    present) and ``all_reduce`` (the calls this package makes) and adds up, per call, the bytes the
    rank contributes (``sent``) and ends up with (``received``), as :func:`communication_volume`
    counts them; ``histograms`` counts the radix-selection histograms (``HISTOGRAM_BINS`` int64
    entries each) among the all-reduces, and ``log`` lists ``(name, sent, received)`` per call, in
    order. The original functions are restored on exit.
    """

    def __init__(self):
        self.sent = self.received = self.calls = self.histograms = 0
        self.log: list = []
        self._orig: Dict[str, object] = {}
        self._dist = None

    def __enter__(self) -> "CollectiveCounter":
        import torch.distributed as dist

        self._dist = dist
        for name in ("all_gather_single", "all_gather_into_tensor", "all_reduce"):
            if hasattr(dist, name):
                self._orig[name] = getattr(dist, name)
                setattr(dist, name, self._wrap(name, self._orig[name]))
        return self

    def __exit__(self, *exc) -> None:
        for name, f in self._orig.items():
            setattr(self._dist, name, f)
        self._orig = {}

    def _wrap(self, name: str, f):
        import torch

        def counted(*args, **kwargs):
            self.calls += 1
            if name == "all_reduce":
                t = args[0]
                if t.dtype == torch.int64 and t.shape[-1] == HISTOGRAM_BINS:
                    self.histograms += t.numel() // HISTOGRAM_BINS
                sent = received = t.numel() * t.element_size()
            else:
                out, inp = args[0], args[1]
                sent, received = inp.numel() * inp.element_size(), out.numel() * out.element_size()
            self.sent += sent
            self.received += received
            self.log.append((name, sent, received))
            return f(*args, **kwargs)

        return counted
