"""Figures like the paper's, drawn with matplotlib when the optional `plots` extra is installed.

Every function takes plain lists / nested lists (or tensors converted by the caller), writes one PNG
and returns its path, or returns None when matplotlib is absent (the report then says how to get
the figures: `pip install -e ".[plots]"`, then `python run.py report --run DIR`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

FIGSIZE = (6.4, 4.8)  # inches; with DPI 100 every figure is 640 x 480 pixels
DPI = 100


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI)  # fixed figsize and dpi, no bbox cropping: the size is predictable
    tmp.replace(path)
    return path


def heatmap(matrix: Sequence[Sequence[float]], path: str | Path, title: str, xlabel: str, ylabel: str,
            xticks: Sequence[str] | None = None, yticks: Sequence[str] | None = None,
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis",
            annotate: bool = False) -> Path | None:
    """A (rows, cols) matrix as an image, e.g. head importance (layers x heads) or an SRCC matrix."""
    if not have_matplotlib():
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=FIGSIZE)
    im = ax.imshow(matrix, aspect="auto", origin="lower" if yticks is None else "upper",
                   cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, rotation=60, ha="right", fontsize=7)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # head / layer indices, never 0.5
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), yticks, fontsize=7)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if annotate:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v == v:  # skip NaN
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def bars(values: Sequence[float], path: str | Path, title: str, xlabel: str, ylabel: str) -> Path | None:
    """One bar per item, e.g. the accuracy drop when each layer's FFN is knocked out."""
    if not have_matplotlib():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.bar(range(len(values)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
    ax.axhline(0, color="k", linewidth=0.6)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str,
           xlabel: str, ylabel: str, dashed: Sequence[str] = ()) -> Path | None:
    """Line plot of label -> (x, y), e.g. accuracy vs % heads pruned, or capacity retained."""
    if not have_matplotlib():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label, linestyle="--" if label in dashed else "-",
                marker="o" if len(xs) <= 12 else None, markersize=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) <= 20:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
