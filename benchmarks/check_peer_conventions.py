"""Check that our named bandwidth conventions equal the peers' own code, on random particles.

Run in an environment with the `bench` extra (pyro-ppl, numpyro, blackjax):

    JAX_ENABLE_X64=1 python benchmarks/check_peer_conventions.py

Prints the largest absolute difference per convention over n in {2, 3, 4, 7, 10, 50} and exits
non-zero if any exceeds 1e-12 (float64).
"""

import sys

import numpy as np


def main() -> int:
    import jax
    import jax.numpy as jnp
    import torch
    from blackjax.vi.svgd import median_heuristic
    from numpyro.contrib.einstein.stein_util import median_bandwidth
    from pyro.infer.svgd import RBFSteinKernel

    from particlesampling import Median, sqdist

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(1)
    worst = {"numpyro": 0.0, "blackjax": 0.0, "pyro": 0.0}
    for n in (2, 3, 4, 7, 10, 50):
        x = rng.normal(size=(n, 3))
        d2 = sqdist(x)
        peer = {
            "numpyro": float(median_bandwidth(jnp.asarray(x), lambda m: 1 / jnp.log(m))),
            "blackjax": float(median_heuristic({"length_scale": 1.0}, jnp.asarray(x))["length_scale"]),
            "pyro": RBFSteinKernel()._bandwidth(
                (torch.tensor(x).unsqueeze(0) - torch.tensor(x).unsqueeze(1)) ** 2).numpy(),
        }
        for name, value in peer.items():
            ours = np.asarray(Median(name)(x, d2))
            worst[name] = max(worst[name], float(np.max(np.abs(ours - value) / np.abs(value))))
    print("convention  max relative difference to the peer's own code")
    for name, value in worst.items():
        print(f"{name:<10}  {value:.2e}")
    return 0 if max(worst.values()) < 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
