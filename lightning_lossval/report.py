"""What a valuation run leaves behind: the values table, its printout, and the detection figure."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from lightning_lossval.metrics import discovery_curve, flag_low

METRIC_NAMES = {
    "detection_f1": "F1 (2-means)",
    "f1_at_noise_rate": "F1 at the noise rate",
    "auroc": "AUROC",
    "average_precision": "average precision",
}


OWN_COLUMNS = ("rank", "index", "prediction", "noisy", "visits", "value", "flagged")  # values.csv's LossVal columns


def values_table(
    values: Tensor, columns: dict[str, list] | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Rows ``rank, index, <columns...>, value, flagged``, lowest value (most suspicious) first; the first
    ``limit`` rows only if given. ``flagged``: in :func:`flagged_rows`.

    ``columns`` holds per-sample lists aligned with ``values`` (e.g. ``row``, ``id``, ``target``).
    """
    columns = columns or {}
    order = values.argsort(stable=True)[:limit].tolist()
    flagged = flagged_rows(values, columns).tolist()
    return [
        {
            "rank": rank,
            "index": i,
            **{name: column[i] for name, column in columns.items()},
            "value": values[i].item(),
            "flagged": flagged[i],
        }
        for rank, i in enumerate(order, start=1)
    ]


def flagged_rows(values: Tensor, columns: dict[str, list] | None = None) -> Tensor:
    """The suggested cut, ``[N]`` bool: the lower group of the values' 2-means split, of the rows measured
    (``visits`` above 0, when ``columns`` has them) whose value fell below the start, 1.0; nothing if their
    values do not differ."""
    visits = (columns or {}).get("visits")
    return flag_low(values, None if visits is None else torch.as_tensor(visits) > 0, below=1.0)


def weight_stats(weights: Tensor) -> dict[str, float]:
    """Scalars of the weights ``[N]``: mean, std, min and the fraction below the initial 1."""
    return {
        "lossval/weight_mean": weights.mean().item(),
        "lossval/weight_std": weights.std().item() if weights.numel() > 1 else 0.0,
        "lossval/weight_min": weights.min().item(),
        "lossval/weight_frac_below_init": (weights < 1.0).float().mean().item(),
    }


def weight_histogram(weights: Tensor, bins: int = 64) -> dict[str, Any]:
    """Keyword arguments of TensorBoard's ``add_histogram_raw``, computed with torch where the
    weights live (numpy's histogram of a million weights on the CPU costs ~70 ms a call)."""
    low, high = weights.min().item(), weights.max().item()
    if high <= low:
        counts, limits = [float(weights.numel())], [high]
    else:
        counts = torch.histc(weights, bins=bins, min=low, max=high).tolist()
        limits = torch.linspace(low, high, bins + 1)[1:].tolist()
    return {
        "min": low,
        "max": high,
        "num": weights.numel(),
        "sum": weights.sum().item(),
        "sum_squares": weights.pow(2).sum().item(),
        "bucket_limits": limits,
        "bucket_counts": counts,
    }


def _cell(value: Any, key: str = "value") -> str:
    if isinstance(value, float):  # the weights to 9 digits; other numbers (a regression target) exactly
        if key == "value":
            return f"{value:.9g}"
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)  # None: not known for this row (no prediction)


def table_csv(rows: list[dict[str, Any]]) -> bytes:
    """CSV text of :func:`values_table` rows (quoted where needed)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v, k) for k, v in row.items()} for row in rows)
    return out.getvalue().encode()


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """A fixed-width (or markdown) table of rows: values to 4 decimals, other numbers (a regression target) to 6
    significant digits."""
    names = list(rows[0])
    cells = [[_shown(k, v) for k, v in row.items()] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(n), *(len(c[j]) for c in cells)) for j, n in enumerate(names)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [names, *cells])


def _shown(name: str, v: Any) -> str:
    if not isinstance(v, float):  # a label or id with a line break or a bar stays on its row
        return _cell(v).replace("\r", "\\r").replace("\n", "\\n").replace("|", "\\|")
    shown = f"{v:.4f}" if name == "value" else f"{v:.7g}"
    return shown[1:] if shown.startswith("-") and float(shown) == 0 else shown  # -7e-8 is 0.0000, not -0.0000


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{METRIC_NAMES.get(k, k)} {v:.3f}" for k, v in metrics.items())


def detection_figure(values: Tensor, noisy: Tensor):
    """Two panels: value histograms of clean and noisy rows; noisy rows found vs rows inspected."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    left, right = figure.subplots(1, 2)
    bins = torch.linspace(values.min().item(), values.max().item() + 1e-9, 41).tolist()
    left.hist(values[~noisy].tolist(), bins=bins, alpha=0.6, label=f"clean ({int((~noisy).sum())})")
    left.hist(values[noisy].tolist(), bins=bins, alpha=0.6, label=f"noisy ({int(noisy.sum())})")
    left.set(xlabel="value (learned weight)", ylabel="rows", title="values of clean and noisy rows")
    left.legend()
    inspected, found = discovery_curve(values, noisy)
    right.plot(inspected.tolist(), found.tolist(), label="LossVal, lowest value first")
    rate = noisy.float().mean().item()
    right.plot([0, 1], [0, 1], "--", color="gray", label="random order")
    right.plot([0, rate, 1], [0, 1, 1], ":", color="black", label="perfect")
    right.set(
        xlabel="fraction of rows inspected",
        ylabel="fraction of noisy rows found",
        title="discovery curve",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    right.legend(loc="lower right")
    figure.tight_layout()
    return figure


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write through a temporary file in the same directory, then rename over ``path``: a crash
    never leaves a truncated file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_values(directory: str | os.PathLike, values: Tensor, columns: dict[str, list]) -> Path:
    """``values.pt`` (the ``[N]`` tensor) and ``values.csv`` (:func:`values_table`) into ``directory``, each
    written atomically; the CSV's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "values.pt", lambda f: torch.save(values, f))
    return write_csv(directory / "values.csv", values_table(values, columns))


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """:func:`table_csv` of ``rows`` into ``path``, atomically."""
    data = table_csv(rows)
    return atomic_write(path, lambda f: f.write(data))


def next_version_dir(root: str | os.PathLike) -> Path:
    """Create ``root/version_N`` for the next ``N`` after the existing ones and return it; creating it claims it,
    so two runs that start together never share one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return root / f"version_{version}"
        except FileExistsError:
            version += 1
