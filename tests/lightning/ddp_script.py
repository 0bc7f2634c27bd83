"""Two-process DDP run of the monitor on CPU (gloo), launched by test_ddp.py in a subprocess.

Usage: python ddp_script.py OUT_DIR. Each rank writes OUT_DIR/rank{r}.json with its history and stop step.
After the real baseline, the memorization score is scripted per rank (rank 1's probes rise at step 4, rank 0's
never do) so the test can check that the stop decision rests on the values of both ranks; every other
statistic is the real, reduced measurement.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
from tiny_training import ScriptedMonitor

from memcallback import ProbeConfig, SharpnessConfig, StopConfig
from memcallback.app.data import DigitsDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP

MONITOR_KWARGS = dict(probes=ProbeConfig(num_samples=8, num_sampling_steps=5), sharpness=SharpnessConfig(k=4),
                      every_n_train_steps=2, save_plot=False, media="none",
                      stop=StopConfig(monitor="memorization/score", threshold=0.3, min_delta=0.05, patience=1))
#: per rank: the real baseline, then scripted scores; the reduced score is the mean of the two ranks' probes
SERIES = {0: [None, 0.0, 0.0, 0.0, 0.0], 1: [None, 0.0, 0.9, 0.9, 0.9]}


def make_module() -> DiffusionModule:
    pl.seed_everything(0, verbose=False)
    return DiffusionModule(ResidualMLP((1, 8, 8), hidden=32, num_blocks=1, time_embed_dim=16), num_timesteps=100)


def main(out: Path) -> None:
    monitor = ScriptedMonitor(SERIES.__getitem__, **MONITOR_KWARGS)
    trainer = pl.Trainer(callbacks=[monitor], accelerator="cpu", devices=2, strategy="ddp", max_steps=8, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=out)
    trainer.fit(make_module(), datamodule=DigitsDataModule(batch_size=8, num_train=16, samples_per_epoch=64))
    result = {"history": monitor.history, "stopped_step": monitor.stopped_step, "global_step": trainer.global_step}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
