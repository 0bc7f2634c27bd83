"""Output and run-selection helpers shared by the validation studies (markdown, plots, cached runs)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.validation.runs import RunSpec, parse_n, train
from memcallback.diffusion import NoiseSchedule


class Writer:
    """Collects one study's markdown (printed as it goes) and saves it to ``<out>/<study>.md``."""

    def __init__(self, out: Path, study: str) -> None:
        """Start the study's markdown; ``out`` is created if missing."""
        self.out, self.study = out, study
        self.command = "python -m benchmarks.validation.study " + " ".join(sys.argv[1:])
        self.lines: list[str] = [f"<!-- written by `{self.command}` -->", ""]
        out.mkdir(parents=True, exist_ok=True)

    def text(self, text: str) -> None:
        """Print a markdown line and keep it."""
        print(text)
        self.lines.append(text)

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        """A titled markdown table, with the command that made it."""
        self.text(f"**{title}** (made by `{self.command}`)\n")
        self.text("| " + " | ".join(header) + " |")
        self.text("|" + "---|" * len(header))
        for row in rows:
            self.text("| " + " | ".join(row) + " |")
        self.text("")

    def figure(self, fig: Figure, name: str) -> None:
        """Save ``fig`` as ``<out>/<name>`` (Agg canvas, no pyplot state) and link it."""
        path = self.out / name
        FigureCanvasAgg(fig)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.text(f"![{name}]({name}) (made by `{self.command}`)\n")

    def save(self) -> None:
        """Write everything collected to ``<out>/<study>.md``."""
        (self.out / f"{self.study}.md").write_text("\n".join(self.lines) + "\n")

    def run(self, study: Callable[[argparse.Namespace, Writer], None], args: argparse.Namespace) -> None:
        """Run ``study`` into this writer, add its wall time as a footer and save."""
        start = time.perf_counter()
        study(args, self)
        self.text(f"_{self.study}: {time.perf_counter() - start:.0f} s wall, torch {torch.__version__}, 1 thread._")
        self.save()


def specs(args: argparse.Namespace) -> list[RunSpec]:
    """The runs of the study."""
    return [RunSpec(parse_n(n), args.steps) for n in args.n]


def train_one(cache: Path, spec: RunSpec) -> dict:
    """Train (or load) one run with one torch thread (also in a worker process)."""
    torch.set_num_threads(1)
    return train(cache, spec)


def runs(args: argparse.Namespace) -> list[dict]:
    """Every run's record, training the missing ones (``--jobs`` at a time, one thread each)."""
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        return list(pool.map(train_one, [args.cache] * len(args.n), specs(args)))


def timestep_key(sigma: float) -> str:
    """History key prefix of a noise level (``t27`` for sigma 0.1 on the linear schedule)."""
    return f"t{NoiseSchedule.create('linear', num_timesteps=1000).timestep_for_sigma(sigma)}"
