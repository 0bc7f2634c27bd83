"""Issue 6, item 2: two DDP processes on CPU (gloo) through ``train.py trainer=ddp`` with W&B.

Both ranks finish, the stop (forced deterministically, see ``forced_stop``) happens at the same step on both,
exactly one W&B run is written and it records the stop, and the reduced metrics equal a one-process run on
the same probes (the baseline check, where both runs have the same weights). ``tests/callback/test_ddp.py``
adds the case where only one rank sees the rise.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from reliability_helpers import (
    ROOT,
    TINY_APP,
    assert_same_values,
    forced_stop,
    read_reports,
    report_overrides,
    train_py,
)

from memcallback.app.train import run

# the effective dimension falls at every check: with patience 2 the rule fires at the second check after the baseline
RUN = ["~callbacks.model_checkpoint", "trainer.max_steps=8", *TINY_APP, *forced_stop(patience=2)]
STOP_STEP = 4


@pytest.mark.slow
def test_ddp_through_train_py_stops_together_with_one_wandb_run(tmp_path) -> None:
    run_dir, reports = tmp_path / "ddp", tmp_path / "ddp_reports"
    proc = train_py(["trainer=ddp", "trainer.accelerator=cpu", "logger=wandb", *RUN, *report_overrides(reports),
                     f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    ranks = read_reports(reports, "end")
    assert [r["world_size"] for r in ranks] == [2, 2]  # both ranks reached the end of fit
    assert [r["stopped_step"] for r in ranks] == [STOP_STEP, STOP_STEP]
    assert [r["global_step"] for r in ranks] == [STOP_STEP, STOP_STEP]
    for check0, check1 in zip(ranks[0]["history"], ranks[1]["history"], strict=True):
        assert_same_values(check0, check1, rel=0.0)  # reduced: the same numbers on every rank
    assert ranks[0]["probes"] != ranks[1]["probes"]  # ... from different shards of the probe set
    assert (proc.stdout + proc.stderr).count(f"Memorization rose at step {STOP_STEP}") == 1  # said once, by rank 0

    wandb_runs = list(tmp_path.rglob("offline-run-*"))
    assert len(wandb_runs) == 1 and wandb_runs[0].parent == run_dir / "wandb", wandb_runs
    assert f"W&B files     {wandb_runs[0]}" in proc.stdout
    assert b"memorization/stopped" in next(wandb_runs[0].glob("run-*.wandb")).read_bytes()
    assert f"Memorization rose at step {STOP_STEP}" in (wandb_runs[0] / "files" / "output.log").read_text()

    single_reports = tmp_path / "single_reports"
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("train", overrides=["logger=none", *RUN, *report_overrides(single_reports)])
    run(cfg, output_dir=tmp_path / "single")
    (single,) = read_reports(single_reports, "end")
    assert single["world_size"] == 1 and single["stopped_step"] == STOP_STEP
    assert_same_values(ranks[0]["history"][0], single["history"][0], rel=1e-5)  # the baseline: same weights

