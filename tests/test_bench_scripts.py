"""The benchmark scripts still run against the library (smoke tests at tiny sizes; no timing is judged)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_side_by_side_quick_runs_every_section():
    # every section: each reuses other bench/ modules and private corners of the library, which is
    # what drifts; about 40 s on 2 busy cores
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_side_by_side.py"), "--preset", "quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "## Summary" in proc.stdout
    for section in ("attention", "csa", "kreciprocal", "alpha_dba", "diffusion_truncated", "superglobal", "gnn",
                    "search"):
        assert f"## {section}:" in proc.stdout
