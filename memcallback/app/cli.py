"""Command line: audit a checkpoint of the reference DiffusionModule after training.

    memcallback rate CHECKPOINT [--samples 64] [--steps 50] [--seed 0]
    memcallback analyze CHECKPOINT [--samples 64] [--sigmas 0.1 0.2] [--json report.json] [--png report.png]
    memcallback safe RUN_DIR

The training images are rebuilt from the Hydra config that ``train.py`` saved beside the checkpoint
(``<run>/.hydra/config.yaml`` for ``<run>/checkpoints/*.ckpt``), or from ``--config PATH``. ``safe`` reads the
monitor's state in the run's checkpoints and says which one holds the weights of the last safe check (the last
check at which the stop rule did not alarm): ``safe.ckpt``, written by the monitor at every safe check.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from memcallback.measure.ground_truth import COPY_RATIO


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def _find_config(checkpoint: Path, config: Path | None) -> Path:
    candidates = [config] if config is not None else [p / ".hydra" / "config.yaml" for p in checkpoint.parents[:3]]
    for path in candidates:
        if path is not None and path.is_file():
            return path
    raise SystemExit(f"error: no Hydra config found for {checkpoint} (looked for .hydra/config.yaml in its run "
                     "folder); pass --config PATH to the config.yaml of the training run.")


def _load(checkpoint: Path, config: Path | None) -> tuple[torch.nn.Module, torch.Tensor]:
    """The trained module (eval mode, CPU) and the distinct training images of its run."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from memcallback.app.models import DiffusionModule

    if not checkpoint.is_file():
        raise SystemExit(f"error: checkpoint {checkpoint} does not exist.")
    cfg = OmegaConf.load(_find_config(checkpoint, config))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = DiffusionModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    return model, datamodule.unique_train_data()


def _monitor_state(path: Path) -> tuple[int, dict | None]:
    """A checkpoint's global step and the MemorizationMonitor state it holds (``None`` without a monitor)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    states = [v for v in checkpoint.get("callbacks", {}).values() if isinstance(v, dict) and "safe_step" in v]
    return int(checkpoint.get("global_step", -1)), (states[0] if states else None)


def _safe(run_dir: Path) -> int:
    """Print the last safe step of a run and the checkpoints that hold it."""
    if not run_dir.is_dir():
        raise SystemExit(f"error: run folder {run_dir} does not exist.")
    found = {path: _monitor_state(path) for path in sorted(run_dir.rglob("*.ckpt"))}
    regular = {path: step for path, (step, state) in found.items() if state is not None and path.name != "safe.ckpt"}
    if not regular:
        raise SystemExit(f"error: no checkpoint with MemorizationMonitor state under {run_dir} (was the monitor on "
                         "and checkpointing enabled?).")
    latest = max(regular, key=regular.get)
    safe_step = found[latest][1]["safe_step"]
    print(f"last safe check: step {safe_step} (monitor state of {latest}, step {regular[latest]})")
    if safe_step is None:
        print("no check was safe: the stop rule alarmed at every check")
        return 0
    safe = [path for path in found if path.name == "safe.ckpt" and found[path][0] == safe_step]
    print(f"safe weights:    {safe[0]}" if safe else "safe weights:    no safe.ckpt of that step (checkpointing off?)")
    before = [path for path, step in regular.items() if step <= safe_step]
    if before:
        path = max(before, key=regular.get)
        print(f"latest regular checkpoint at or before it: {path} (step {regular[path]})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memcallback", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("safe", help="the checkpoint of the last safe check of a run").add_argument("run_dir", type=Path)
    for name, text in (("rate", "nearest-neighbour memorization rate of DDIM samples"),
                       ("analyze", "sharpness report of DDIM samples (memcallback.analyze)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("checkpoint", type=Path)
        p.add_argument("--config", type=Path, default=None, help="Hydra config.yaml of the training run")
        p.add_argument("--samples", type=_positive_int, default=64)
        p.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps")
        p.add_argument("--seed", type=int, default=0)
    sub.choices["rate"].add_argument("--copy-ratio", type=float, default=COPY_RATIO,
                                     help="nearest/second-nearest distance ratio under which a sample is a copy")
    sub.choices["analyze"].add_argument("--sigmas", type=float, nargs="+", default=[0.1])
    sub.choices["analyze"].add_argument("--json", type=Path, default=None, help="also write the summary here")
    sub.choices["analyze"].add_argument("--png", type=Path, default=None,
                                        help="also draw the scores and the spectrum into this PNG")
    args = parser.parse_args(argv)
    if args.command == "safe":
        return _safe(args.run_dir)

    model, train = _load(args.checkpoint, args.config)
    if args.command == "rate":
        from memcallback.app.train import memorization_rate

        rate = memorization_rate(model, train, args.samples, args.steps, args.seed, args.copy_ratio)
        print(f"memorization rate: {rate:.1%} of {args.samples} DDIM-{args.steps} samples copy one of the "
              f"{len(train)} training images (d1/d2 < {args.copy_ratio:.3g})")
        return 0

    from memcallback import analyze

    report = analyze(model, num_samples=args.samples, sigmas=args.sigmas, num_sampling_steps=args.steps,
                     seed=args.seed, train_data=train)
    summary = report.summary()
    for key, value in summary.items():
        if "/" not in key and not (isinstance(value, float) and math.isnan(value)):
            print(f"{key:>20s}  {value:.4g}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.png is not None:
        from memcallback.viz.plots import plot_report

        print(f"report drawn in {plot_report(report, args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
