"""Output tier: W&B media (:mod:`memcallback.viz.wandb_media`) and matplotlib figures (:mod:`memcallback.viz.plots`).

Import the submodule you need; neither is imported by the measurement tiers."""
