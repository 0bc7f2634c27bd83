"""A model sharded with FSDP2 (``fully_shard``, two CPU ranks over gloo): every rank makes the same network calls,
so a check completes, agrees across ranks and (dense) equals the unsharded model's; the settings whose call
sequence a sharded forward cannot follow are refused at setup with a message that says what to change."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_training import free_port


@pytest.mark.slow
def test_fsdp_ranks_measure_in_step_and_match_the_unsharded_model(tmp_path) -> None:
    script = Path(__file__).with_name("fsdp_script.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in ("dense", "budget"):
        sharded = [r[name]["sharded"] for r in ranks]
        assert {k: v for k, v in sharded[0].items() if k != "seconds"} == {
            k: v for k, v in sharded[1].items() if k != "seconds"}  # reduced: the same on both ranks
    dense, single = ranks[0]["dense"]["sharded"], ranks[0]["dense"]["single"]
    for key in ("score", "mu_max", "mu_topk", "effective_dim", "min_mu", "hs_norm", "eps_norm_sq"):
        assert dense[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    assert ranks[0]["budget"]["sharded"]["partial"] == 0.0
    for r in ranks:
        assert "krylov_steps" in r["to_tol"] and "jvp='forward'" in r["double_backward"]
