"""The core imports and samples with torch and matplotlib unimportable.

A subprocess installs a meta-path finder that raises ImportError for ``torch`` and ``matplotlib``
(and their submodules) before anything else is imported, then exercises the NumPy path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = ("torch", "matplotlib")

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, _Block())
    for _m in list(sys.modules):
        if _m.split(".")[0] in BLOCKED:
            del sys.modules[_m]
    """
)


def _run(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(BLOCKER + textwrap.dedent(body))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MPLBACKEND", None)
    return subprocess.run([sys.executable, "-W", "error", str(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_blocker_really_blocks(tmp_path):
    proc = _run(
        """
        for name in ("torch", "matplotlib", "matplotlib.pyplot"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(f"{name} imported")
        print("OK")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


def test_core_works_without_torch_and_matplotlib(tmp_path):
    proc = _run(
        """
        import numpy as np
        import particlesampling
        import particlesampling.targets
        import particlesampling.diagnostics
        from particlesampling import stein_direction
        from particlesampling.samplers import svgd, spos, sgld
        from particlesampling.runner import run_sampler
        from particlesampling.step_sizes import adagrad_momentum
        from particlesampling.targets import get_target
        from particlesampling import diagnostics, plotting, cli

        t = get_target("gaussian")
        x0 = t.initial_particles(30, 0)
        for make in (svgd, spos, sgld):
            sm = make(t.score, adagrad_momentum(0.05))
            state, trace = run_sampler(sm, sm.init(x0, seed=1), 5, trace_every=1,
                                       metrics={"ksd": lambda x: diagnostics.ksd(x, t.score(x))})
            assert isinstance(state.particles, np.ndarray) and state.step == 5
            assert np.all(np.isfinite(state.particles))
            assert trace.metrics["ksd"][-1] < trace.metrics["ksd"][0]
        assert np.all(np.isfinite(stein_direction(x0, t.score(x0))))

        # plotting reports the missing dependency clearly
        try:
            plotting.plot_particles(t, x0)
        except ImportError as exc:
            assert "matplotlib" in str(exc)
        else:
            raise SystemExit("plotting worked without matplotlib")

        # the CLI on NumPy without a plot
        assert cli.main(["targets"]) == 0
        assert cli.main(["sample", "--target", "gaussian", "--particles", "8", "--steps", "3",
                         "--no-plot", "--out", "out"]) == 0

        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "matplotlib")]
        assert not bad, bad
        print("CORE-OK")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CORE-OK" in proc.stdout
    assert (tmp_path / "out" / "summary.json").exists()
    assert not (tmp_path / "out" / "particles.png").exists()
