"""Figures like the paper's, drawn with matplotlib when the optional `plots` extra is installed.

Every function takes plain lists / nested lists (or tensors converted by the caller), writes one PNG
and returns its path, or returns None when matplotlib is absent (the report then says how to get
the figures: `pip install -e ".[plots]"`, then `python run.py report --run DIR`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

FIGSIZE = (6.4, 4.8)  # inches; with DPI 150 a single plot is 960 x 720 pixels
DPI = 150  # print resolution for a column-wide figure; panels scale with their count


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


# -- panels: one figure, one small plot per task (the paper's per-task appendix figures) --------------
PANEL_SIZE = (3.2, 2.4)  # inches per panel; a figure of r x c panels is (c * 3.2) x (r * 2.4) inches


def _panels(n: int, max_cols: int = 4):
    """(fig, flat list of n axes) on a grid of at most max_cols columns; unused axes are hidden."""
    plt = _pyplot()
    cols = max(1, min(max_cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return plt, fig, flat[:n]


def _finish(plt, fig, path: str | Path, title: str) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def heatmap_panels(matrices: dict[str, Sequence[Sequence[float]]], path: str | Path, title: str,
                   xlabel: str, ylabel: str, vmax_fraction: float | None = None) -> Path | None:
    """One (rows, cols) heatmap per name, e.g. each task's (layers, heads) importance. vmax_fraction:
    clip each panel's colour scale at that share of its maximum (the paper's per-task maps use 1/10)."""
    if not have_matplotlib() or not matrices:
        return None
    from matplotlib.ticker import MaxNLocator

    plt, fig, axes = _panels(len(matrices))
    for ax, (name, m) in zip(axes, matrices.items()):
        peak = max((v for row in m for v in row), default=0.0)
        vmax = peak * vmax_fraction if vmax_fraction and peak > 0 else None
        im = ax.imshow(m, aspect="auto", origin="lower", vmin=0 if vmax else None, vmax=vmax, interpolation="nearest")
        fig.colorbar(im, ax=ax)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=6)
    return _finish(plt, fig, path, title)


def bar_panels(values: dict[str, Sequence[float]], path: str | Path, title: str, xlabel: str,
               ylabel: str) -> Path | None:
    """One bar chart per name, e.g. each task's metric drop per knocked-out FFN."""
    if not have_matplotlib() or not values:
        return None
    plt, fig, axes = _panels(len(values))
    for ax, (name, vals) in zip(axes, values.items()):
        ax.bar(range(len(vals)), vals, color=["tab:red" if v > 0 else "tab:blue" for v in vals])
        ax.axhline(0, color="k", linewidth=0.6)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
    return _finish(plt, fig, path, title)


def curve_panels(panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], path: str | Path,
                 title: str, xlabel: str, ylabel: str, bold: Sequence[str] = (), dashed: Sequence[str] = (),
                 marks: dict[str, Sequence[tuple[float, str]]] | None = None,
                 errors: dict[str, dict[str, Sequence[tuple[float, float] | None]]] | None = None) -> Path | None:
    """One line plot per panel name of label -> (x, y); labels in `bold` drawn thick, in `dashed`
    dashed; marks[panel] = [(x, label)] draws labelled vertical lines (e.g. the knee);
    errors[panel][label] = (low, high) per point, drawn as error bars that may be asymmetric, as exact
    intervals of a proportion are (None: no bar there)."""
    if not have_matplotlib() or not panels:
        return None
    plt, fig, axes = _panels(len(panels), max_cols=3)
    for ax, (name, series) in zip(axes, panels.items()):
        for label, (xs, ys) in series.items():
            line = ax.plot(list(xs), list(ys), label=label, linewidth=2.2 if label in bold else 0.9,
                           linestyle="--" if label in dashed else "-", marker="o" if len(xs) <= 12 else None,
                           markersize=2.5, color="k" if label in bold else None)[0]
            err = (errors or {}).get(name, {}).get(label)
            if err is not None:
                below = [0.0 if e is None else max(0.0, y - e[0]) for y, e in zip(ys, err)]
                above = [0.0 if e is None else max(0.0, e[1] - y) for y, e in zip(ys, err)]
                ax.errorbar(list(xs), list(ys), yerr=[below, above], fmt="none",
                            ecolor=line.get_color(), elinewidth=1.2 if label in bold else 0.6, capsize=1.5)
        for x, label in (marks or {}).get(name, []):
            ax.axvline(x, color="tab:red", linewidth=0.8, linestyle=":")
            ax.annotate(label, (x, 0.02), xycoords=("data", "axes fraction"), fontsize=6, color="tab:red")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if 1 < len(series) <= 20:  # one series per panel: the panel's title names it
            ax.legend(fontsize=5, ncol=2)
    return _finish(plt, fig, path, title)


def matrix_panels(matrices: dict[str, tuple[Sequence[Sequence[float]], Sequence[str], Sequence[str]]],
                  path: str | Path, title: str, vmin: float = -1, vmax: float = 1) -> Path | None:
    """Labelled matrices side by side: name -> (matrix, row labels, column labels), e.g. SRCC in two variants."""
    if not have_matplotlib() or not matrices:
        return None
    plt = _pyplot()
    n = len(matrices)
    size = max(len(r) for _, r, _ in matrices.values())
    side = min(8.0, 2.0 + 0.35 * size)
    fig, axes = plt.subplots(1, n, figsize=(side * n, side), squeeze=False)
    for ax, (name, (m, rows, cols)) in zip(axes[0], matrices.items()):
        im = ax.imshow([[float("nan") if v is None else v for v in row] for row in m], cmap="coolwarm",
                       vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
        fig.colorbar(im, ax=ax)
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(rows)), rows, fontsize=6)
        ax.set_title(name, fontsize=8)
        if size <= 18:
            for i, row in enumerate(m):
                for j, v in enumerate(row):
                    if v is not None and v == v:
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=4)
    return _finish(plt, fig, path, title)
