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
from memcallback.measure.sharpness import SharpnessConfig


@pytest.mark.slow
def test_two_process_ddp_stops_together_and_matches_one_process(tmp_path) -> None:
    script = Path(__file__).with_name("ddp_script.py")
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=os.pathsep.join([str(script.parent), *sys.path]),
               MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # rank 1 alone saw the rise at step 4; the decision is reduced, so both ranks stop there
    assert [r["stopped_step"] for r in ranks] == [4, 4]
    assert [r["global_step"] for r in ranks] == [4, 4]
    # the reduced statistics are identical on both ranks ...
    for key in ("real_score", "mu_max", "effective_dim", "flagged_fraction", "nn_rate"):
        assert [h[key] for h in ranks[0]["history"]] == [h[key] for h in ranks[1]["history"]]
    # ... and the baseline (same initial weights) equals a one-process measurement of all 8 probes
    single = analyze(make_module(), num_samples=MONITOR_KWARGS["num_samples"], sigmas=(0.1,),
                     num_sampling_steps=MONITOR_KWARGS["num_sampling_steps"],
                     config=SharpnessConfig(k=MONITOR_KWARGS["k"])).summary()
    baseline = ranks[0]["history"][0]
    for key in ("mu_max", "mu_topk", "effective_dim", "min_mu", "asymmetry"):
        torch.testing.assert_close(baseline[key], single[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(baseline["real_score"], single["score"], rtol=1e-4, atol=1e-5)
