import math
import struct

import matplotlib
import pytest

from memcallback.viz.plots import plot_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(num: int = 8, nn_rate: bool = True, auroc: bool = False) -> list[dict[str, float]]:
    rows = []
    for i in range(num):
        score = 0.05 + 0.1 * i
        row = {"step": 500.0 * i, "epoch": float(i), "score": score, "flagged_fraction": max(0.0, score - 0.2),
               "effective_dim": 60.0 - 7.0 * i, "mu_max": 1.0 - score, "seconds": 0.3}
        if nn_rate:
            row["nn_rate"] = max(0.0, score - 0.3)
        if auroc:
            row["auroc"] = math.nan if i < 2 else 0.7 + 0.03 * i
        rows.append(row)
    return rows


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    return struct.unpack(">II", data[16:24])  # IHDR width, height


@pytest.mark.parametrize(("nn_rate", "auroc", "stopped_step", "panels"),
                         [(True, False, 3000, 2), (False, False, None, 2), (True, True, 2500, 3)])
def test_plot_history_writes_a_png_with_one_panel_row_per_quantity(tmp_path, nn_rate, auroc, stopped_step, panels):
    backend = matplotlib.get_backend()
    path = plot_history(_history(nn_rate=nn_rate, auroc=auroc), tmp_path / "nested" / "dir" / "memorization.png",
                        threshold=0.3, stopped_step=stopped_step)
    assert path == tmp_path / "nested" / "dir" / "memorization.png"
    width, height = _png_size(path)
    assert width == 800 and height == round(100 * (2.6 * panels + 0.6))
    assert 10_000 < path.stat().st_size < 1_000_000
    assert matplotlib.get_backend() == backend


def test_plot_history_accepts_a_string_path_and_a_single_row(tmp_path):
    path = plot_history(_history(num=1), str(tmp_path / "one.png"))
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_plot_history_handles_a_monitor_outside_the_default_panels(tmp_path):
    path = plot_history(_history(), tmp_path / "mu.png", monitor="memorization/mu_max", threshold=0.5)
    assert _png_size(path)[1] == round(100 * (2.6 * 2 + 0.6))


def test_plot_history_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plot_history([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_history_rejects_rows_without_step(tmp_path):
    with pytest.raises(ValueError, match="'step'"):
        plot_history([{"score": 0.1}], tmp_path / "x.png")
