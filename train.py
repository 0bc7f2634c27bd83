"""Train a diffusion model with Hydra: ``python train.py [experiment=...] [key=value ...]``.

All the work happens in :func:`memcallback.app.train.run`; this file only hands it Hydra's config.
"""

import hydra
from omegaconf import DictConfig

from memcallback.app.train import run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
