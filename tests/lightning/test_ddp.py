import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_script import MONITOR_KWARGS, make_module
from tiny_training import free_port

from memcallback import analyze


@pytest.mark.slow
def test_two_process_ddp_stops_together_and_matches_one_process(tmp_path) -> None:
    script = Path(__file__).with_name("ddp_script.py")
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=os.pathsep.join([str(script.parent), *sys.path]),
               MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # only rank 1's probes rose at step 4; the values are reduced over both ranks, so both stop there
    assert [r["stopped_step"] for r in ranks] == [4, 4]
    assert [r["global_step"] for r in ranks] == [4, 4]
    # the mean of rank 0's 4 probes at 0 and rank 1's 4 at 0.9 (float32)
    assert [h["score"] for h in ranks[0]["history"][1:]] == pytest.approx([0.0, 0.45])
    # the reduced statistics are identical on both ranks ...
    for key in ("score", "mu_max", "effective_dim", "flagged_fraction", "nn_rate", "auroc", "partial"):
        assert [h[key] for h in ranks[0]["history"]] == [h[key] for h in ranks[1]["history"]]
    # ... and the baseline (same initial weights) equals a one-process measurement of all 8 probes
    probes = MONITOR_KWARGS["probes"]
    single = analyze(make_module(), num_samples=probes.num_samples, sigmas=probes.sigmas,
                     num_sampling_steps=probes.num_sampling_steps, config=MONITOR_KWARGS["sharpness"]).summary()
    baseline = ranks[0]["history"][0]
    for key in ("score", "mu_max", "mu_topk", "effective_dim", "min_mu", "asymmetry"):
        torch.testing.assert_close(baseline[key], single[key], rtol=1e-4, atol=1e-5)
