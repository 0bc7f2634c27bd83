"""Train a diffusion model with Hydra: ``python train.py [experiment=...] [key=value ...]``.

All the work happens in :func:`memcallback.app.train.run`; this file only hands it Hydra's config.
The task function returns the memorization callback's monitored value at the end of training (its
``stop.monitor`` key in ``trainer.callback_metrics``, ``memorization/score`` by default; ``None`` without the
callback), so a Hydra sweeper (``--multirun hydra/sweeper=optuna``) can minimize it.
"""

import hydra
from omegaconf import DictConfig

from memcallback.app.train import run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)["monitor_value"]


if __name__ == "__main__":
    main()
