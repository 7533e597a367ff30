"""The benchmark scripts run end to end (toy sizes, CPU): their numbers are not checked."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_gpu_benchmark_smoke_run():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke",
                          "--sweep", "swa2048-32K", "swa2048-32K", "natten2d-256x256-w80"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| swa")
            or line.startswith("| natten")]
    kernels = {(r[0], r[1]) for r in rows}
    assert ("| swa2048-32K", "maskc") in kernels and ("| swa2048-32K", "sdpa-dense") in kernels
    assert ("| natten2d-256x256-w80", "maskc") in kernels
    assert sum(r[1].startswith("maskc fwd (") for r in rows) == 4  # the tile sweep
    densities = {r[0]: r[6] for r in rows}
    assert densities["| natten2d-256x256-w80"] == "9.77%"  # 25 of 256 keys per query, exactly
