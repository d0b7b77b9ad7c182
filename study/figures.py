"""Figures like the paper's, drawn with matplotlib when the optional `plots` extra is installed.

Every function takes plain lists / nested lists (or tensors converted by the caller), writes one PNG
and returns its path, or returns None when matplotlib is absent (the report then says how to get
the figures: `pip install -e ".[plots]"`, then `python run.py report --out DIR`).
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


LABEL_PT = 7  # the smallest text on a figure (tick labels, cell numbers, legends): readable in print at 100%


def heatmap(matrix: Sequence[Sequence[float]], path: str | Path, title: str, xlabel: str, ylabel: str,
            xticks: Sequence[str] | None = None, yticks: Sequence[str] | None = None,
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis",
            annotate: bool = False, cbar_label: str = "value", note: str | None = None) -> Path | None:
    """A (rows, cols) matrix as an image, e.g. head importance (layers x heads) or the pruning grid; its colour bar
    labelled with what the colour is; `annotate` writes each cell's value (dark text on light cells); `note`: a
    sentence under the plot (e.g. why some columns are equal)."""
    if not have_matplotlib():
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(FIGSIZE[0], FIGSIZE[1] + (0.5 if note else 0)))
    im = ax.imshow(matrix, aspect="auto", origin="lower" if yticks is None else "upper",
                   cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=cbar_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xticks],
                      rotation=0 if len(xticks) <= 12 else 60, fontsize=LABEL_PT)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # head / layer indices, never 0.5
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), [f"{y:g}" if isinstance(y, float) else str(y) for y in yticks],
                      fontsize=LABEL_PT)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if annotate:
        _annotate(ax, im, matrix)
    if note:
        fig.text(0.01, 0.01, note, fontsize=LABEL_PT, wrap=True, va="bottom")
    fig.tight_layout(rect=(0, 0.09 if note else 0, 1, 1))
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def _annotate(ax, im, matrix: Sequence[Sequence[float]], fontsize: float = LABEL_PT) -> None:
    """Each cell's value, black on light cells and white on dark ones (NaN and None left blank)."""
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is not None and v == v:
                r, g, b, _ = im.cmap(im.norm(v))
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w")


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
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layer indices
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str,
           xlabel: str, ylabel: str, dashed: Sequence[str] = (), xticks: Sequence[float] | None = None,
           xticklabels: Sequence[str] | None = None) -> Path | None:
    """Line plot of label -> (x, y), e.g. capacity retained; the legend to the right of the plot, never on the
    data; xticks/xticklabels put the ticks where a table's columns are."""
    if not have_matplotlib():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 2.2, FIGSIZE[1]))
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label, linestyle="--" if label in dashed else "-",
                marker="o" if len(xs) <= 12 else None, markersize=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(list(xticks), list(xticklabels) if xticklabels is not None else None, fontsize=LABEL_PT)
    ax.grid(alpha=0.3)
    if len(series) <= 20:
        ax.legend(fontsize=LABEL_PT, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


# -- panels: one figure, one small plot per task (the paper's per-task appendix figures) --------------
PANEL_SIZE = (3.2, 2.4)  # inches per panel; a figure of r x c panels is (c * 3.2) x (r * 2.4) inches


def _panels(n: int, max_cols: int = 4, extra_height: float = 0.0):
    """(fig, flat list of n axes) on a grid of at most max_cols columns; unused axes are hidden; extra_height
    inches below the panels for a shared legend."""
    plt = _pyplot()
    cols = max(1, min(max_cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + extra_height),
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return plt, fig, flat[:n]


def _finish(plt, fig, path: str | Path, title: str, bottom: float = 0.0) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def heatmap_panels(matrices: dict[str, Sequence[Sequence[float]]], path: str | Path, title: str,
                   xlabel: str, ylabel: str, cbar_label: str = "value", log: bool = False) -> Path | None:
    """One (rows, cols) heatmap per name, e.g. each task's (layers, heads) importance, each with its own labelled
    colour bar. log: a logarithmic colour scale (from the panel's smallest positive value), so values orders of
    magnitude apart (a small model's last layer against the others) all show."""
    if not have_matplotlib() or not matrices:
        return None
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    plt, fig, axes = _panels(len(matrices))
    for ax, (name, m) in zip(axes, matrices.items()):
        positive = [v for row in m for v in row if v is not None and v > 0]
        norm = LogNorm(vmin=min(positive), vmax=max(positive)) if log and positive and min(positive) < max(positive) \
            else None
        shown = [[v if not norm or (v is not None and v > 0) else min(positive) for v in row] for row in m]
        im = ax.imshow(shown, aspect="auto", origin="lower", norm=norm, interpolation="nearest")
        bar = fig.colorbar(im, ax=ax)
        bar.set_label(cbar_label, fontsize=LABEL_PT)
        bar.ax.tick_params(which="both", labelsize=LABEL_PT)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=LABEL_PT)
        ax.set_ylabel(ylabel, fontsize=LABEL_PT)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=LABEL_PT)
    return _finish(plt, fig, path, title)


def bar_panels(values: dict[str, Sequence[float]], path: str | Path, title: str, xlabel: str,
               ylabel: str) -> Path | None:
    """One bar chart per name, e.g. each task's metric drop per knocked-out FFN."""
    if not have_matplotlib() or not values:
        return None
    from matplotlib.ticker import MaxNLocator

    plt, fig, axes = _panels(len(values))
    for ax, (name, vals) in zip(axes, values.items()):
        ax.bar(range(len(vals)), vals, color=["tab:red" if v > 0 else "tab:blue" for v in vals])
        ax.axhline(0, color="k", linewidth=0.6)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=LABEL_PT)
        ax.set_ylabel(ylabel, fontsize=LABEL_PT)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=LABEL_PT)
    return _finish(plt, fig, path, title)


def curve_panels(panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], path: str | Path,
                 title: str, xlabel: str, ylabel: str, bold: Sequence[str] = (), dashed: Sequence[str] = (),
                 marks: dict[str, Sequence[tuple[float, str]]] | None = None,
                 errors: dict[str, dict[str, Sequence[tuple[float, float] | None]]] | None = None,
                 note: str | None = None) -> Path | None:
    """One line plot per panel name of label -> (x, y); labels in `bold` drawn thick, in `dashed`
    dashed; marks[panel] = [(x, label)] draws labelled vertical lines (e.g. the knee);
    errors[panel][label] = (low, high) per point, drawn as error bars that may be asymmetric, as exact
    intervals of a proportion are (None: no bar there). Where panels hold several series, one legend for the
    figure sits below the panels, never on the data; a panel of one series is named by its title. `note`: a
    sentence under the panels (e.g. why a curve is flat on a small model)."""
    if not have_matplotlib() or not panels:
        return None
    labels = list(dict.fromkeys(label for series in panels.values() if len(series) > 1 for label in series))
    ncol = min(5, max(1, len(labels)))
    legend_in = (0.15 + 0.17 * -(-len(labels) // ncol)) if labels else 0.0
    plt, fig, axes = _panels(len(panels), max_cols=3, extra_height=legend_in + (0.4 if note else 0.0))
    palette = [f"C{i}" for i in range(10)] if len(labels) <= 10 else [_pyplot().get_cmap("tab20")(i) for i in range(20)]
    colours = {label: palette[i % len(palette)] for i, label in enumerate(labels)}  # one colour per label, all panels
    handles: dict[str, object] = {}
    for ax, (name, series) in zip(axes, panels.items()):
        for label, (xs, ys) in series.items():
            line = ax.plot(list(xs), list(ys), label=label, linewidth=2.2 if label in bold else 0.9,
                           linestyle="--" if label in dashed else "-", marker="o" if len(xs) <= 12 else None,
                           markersize=2.5, color="k" if label in bold else colours.get(label))[0]
            handles.setdefault(label, line)
            _error_bars(ax, xs, ys, (errors or {}).get(name, {}).get(label), line.get_color(), label in bold)
        for x, label in (marks or {}).get(name, []):
            ax.axvline(x, color="tab:red", linewidth=0.8, linestyle=":")
            ax.annotate(label, (x, 0.02), xycoords=("data", "axes fraction"), fontsize=LABEL_PT, color="tab:red")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=LABEL_PT)
        ax.set_ylabel(ylabel, fontsize=LABEL_PT)
        ax.tick_params(labelsize=LABEL_PT)
        ax.grid(alpha=0.3)
    note_in = 0.4 if note else 0.0
    if note:
        fig.text(0.01, 0.01, note, fontsize=LABEL_PT, wrap=True, va="bottom")
    if labels and len(labels) <= 30:
        fig.legend([handles[label] for label in labels], labels, loc="lower center", ncol=ncol, fontsize=LABEL_PT,
                   frameon=False, bbox_to_anchor=(0.5, note_in / fig.get_figheight()))
    return _finish(plt, fig, path, title, bottom=(legend_in + note_in) / fig.get_figheight())


def _error_bars(ax, xs, ys, err: Sequence[tuple[float, float] | None] | None, colour, bold: bool) -> None:
    """(low, high) per point as error bars, asymmetric where the interval is (None: no bar at that point)."""
    if err is None:
        return
    below = [0.0 if e is None else max(0.0, y - e[0]) for y, e in zip(ys, err)]
    above = [0.0 if e is None else max(0.0, e[1] - y) for y, e in zip(ys, err)]
    ax.errorbar(list(xs), list(ys), yerr=[below, above], fmt="none", ecolor=colour, elinewidth=1.2 if bold else 0.6,
                capsize=1.5)


def matrix_panels(matrices: dict[str, tuple[Sequence[Sequence[float]], Sequence[str], Sequence[str]]],
                  path: str | Path, title: str, vmin: float = -1, vmax: float = 1,
                  cbar_label: str = "rank correlation") -> Path | None:
    """Labelled matrices side by side: name -> (matrix, row labels, column labels), e.g. SRCC in two variants; cells
    large enough for their numbers at LABEL_PT (up to 18 rows; beyond, the colour bar alone)."""
    if not have_matplotlib() or not matrices:
        return None
    plt = _pyplot()
    n = len(matrices)
    size = max(len(r) for _, r, _ in matrices.values())
    side = 2.5 + 0.42 * size  # 0.42 inch a cell: "-0.55" at 7 pt fits inside
    fig, axes = plt.subplots(1, n, figsize=(side * n + 1.2 * n, side), squeeze=False)
    for ax, (name, (m, rows, cols)) in zip(axes[0], matrices.items()):
        values = [[float("nan") if v is None else v for v in row] for row in m]
        im = ax.imshow(values, cmap="coolwarm", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
        fig.colorbar(im, ax=ax, label=cbar_label)
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=LABEL_PT)
        ax.set_yticks(range(len(rows)), rows, fontsize=LABEL_PT)
        ax.set_title(name, fontsize=9)
        if size <= 18:
            _annotate(ax, im, values)
    return _finish(plt, fig, path, title)
