"""Every kind of figure the report draws, checked for what a reader needs (study/figures.py): labelled axes and
colour bars, text no smaller than LABEL_PT, legends off the data, colour scales that show the data, ticks where the
tables' columns are, and a note under a figure whose model makes some of it degenerate. Each figure is drawn to a
PNG as the report draws it, and its matplotlib figure inspected before it is closed."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from study import figures  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn in a test, kept for inspection (their PNGs are still written)."""
    kept = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.append(fig) or save(fig, path))
    return kept


def _boxes(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the figure was closed after saving: a canvas to measure on
    data = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_visible()]
    return renderer, data


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _colorbar_labels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _smallest_text(fig) -> float:
    sizes = [t.get_fontsize() for ax in fig.axes for t in ax.texts]
    sizes += [t.get_fontsize() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    return min(sizes)


def test_heatmap_labels_its_colour_bar_and_writes_readable_cells_and_a_note(tmp_path, drawn):
    matrix = [[31.5, 31.5, 44.4], [33.3, 33.3, 46.2]]
    assert figures.heatmap(matrix, tmp_path / "grid.png", "grid", "FFN % pruned", "heads % pruned", xticks=[0, 10, 50],
                           yticks=[0, 10], annotate=True, cbar_label="mean metric x100",
                           note="some percentages are one pruning").is_file()
    fig = drawn[0]
    assert _colorbar_labels(fig) == ["mean metric x100"]
    ax = fig.axes[0]
    cells = [t for t in ax.texts]
    assert [t.get_text() for t in cells] == ["31.50", "31.50", "44.40", "33.30", "33.30", "46.20"]
    assert _smallest_text(fig) >= figures.LABEL_PT
    dark, light = cells[0], cells[5]  # viridis: the smallest value dark (white text), the largest light (black)
    assert dark.get_color() == "w" and light.get_color() == "k"
    assert any("one pruning" in t.get_text() for t in fig.texts)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10", "50"]


def test_heatmap_panels_on_a_log_scale_show_values_orders_of_magnitude_apart(tmp_path, drawn):
    maps = {"copa": [[0.002, 0.001], [0.05, 0.09]], "rte": [[0.0, 0.003], [0.2, 1.0]]}  # a zero: drawn at the floor
    figures.heatmap_panels(maps, tmp_path / "p.png", "importance", "head", "layer", cbar_label="importance (log scale)",
                           log=True)
    fig = drawn[0]
    assert _colorbar_labels(fig) == ["importance (log scale)"] * 2
    images = [ax.images[0] for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    for image, m in zip(images, maps.values()):
        positive = [v for row in m for v in row if v > 0]
        assert image.norm.vmin == min(positive) and image.norm.vmax == max(positive)  # no cap: every value shows
        shown = image.norm([v for row in m for v in row if v > 0])
        assert len(set(round(float(v), 3) for v in shown)) == len(positive)  # distinct values, distinct colours


def test_curves_keep_the_legend_off_the_data_and_ticks_where_the_table_is(tmp_path, drawn):
    x = [0, 12.5, 25, 37.5]
    series = {"random_expected": (x, [100, 87.5, 75, 62.5]), "shots-0/aggregate": (x, [100, 99, 98, 51])}
    figures.curves(series, tmp_path / "c.png", "capacity", "% of heads pruned", "% kept", dashed=["random_expected"],
                   xticks=x[1:], xticklabels=["12.5", "25", "37.5"])
    fig = drawn[0]
    renderer, axes = _boxes(fig)
    legend = axes[0].get_legend()
    assert legend is not None and not _overlaps(legend.get_window_extent(renderer), axes[0].get_window_extent(renderer))
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["12.5", "25", "37.5"]
    assert axes[0].get_xlabel() == "% of heads pruned"


def test_curve_panels_share_one_legend_below_every_panel_with_one_colour_per_label(tmp_path, drawn):
    x = [0, 10, 20]
    labels = [f"task{i}" for i in range(14)] + ["random (expected)"]
    panels = {f"shots-{k}": {label: (x, [100, 90 - i, 80 - i]) for i, label in enumerate(labels)} for k in (0, 1, 5)}
    errors = {"shots-0": {"task0": [(95, 100), None, (70, 85)]}}
    figures.curve_panels(panels, tmp_path / "p.png", "per task", "% heads pruned", "% kept",
                         dashed=["random (expected)"], errors=errors, marks={"shots-0": [(10, "knee 10%")]},
                         note="a note under the legend")
    fig = drawn[0]
    renderer, axes = _boxes(fig)
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in axes)
    box = fig.legends[0].get_window_extent(renderer)
    note = next(t for t in fig.texts if t.get_text() == "a note under the legend").get_window_extent(renderer)
    assert not any(_overlaps(box, ax.get_window_extent(renderer)) for ax in axes) and not _overlaps(box, note)
    assert not any(_overlaps(note, ax.get_window_extent(renderer)) for ax in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == labels
    colours = {}
    for ax in axes:
        for line in ax.get_lines():
            if line.get_label() in labels:
                colours.setdefault(line.get_label(), set()).add(str(line.get_color()))
    assert all(len(c) == 1 for c in colours.values())  # the same colour in every panel
    assert len({next(iter(c)) for c in colours.values()}) == len(labels)  # and 15 different colours
    assert _smallest_text(fig) >= figures.LABEL_PT


def test_a_panel_of_one_series_is_named_by_its_title_and_has_no_legend(tmp_path, drawn):
    figures.curve_panels({"copa": {"copa": ([0, 10], [75, 70])}}, tmp_path / "p.png", "pruning", "%", "metric x100",
                         note="0-40% remove 0 FFNs: the curves are flat there by construction")
    fig = drawn[0]
    assert fig.legends == [] and fig.axes[0].get_title() == "copa"
    renderer, axes = _boxes(fig)
    note = next(t for t in fig.texts if "by construction" in t.get_text())
    assert not _overlaps(note.get_window_extent(renderer), axes[0].get_window_extent(renderer))


def test_matrix_panels_cells_are_readable_and_the_colour_bar_says_what_it_is(tmp_path, drawn):
    tasks = [f"t{i}" for i in range(16)]
    m = [[(i * j % 7) / 7 - 0.4 for j in range(16)] for i in range(16)]
    figures.matrix_panels({"rho": (m, tasks, tasks), "srcc": (m, tasks, tasks)}, tmp_path / "m.png", "SRCC",
                          cbar_label="rank correlation")
    fig = drawn[0]
    assert _colorbar_labels(fig) == ["rank correlation"] * 2
    assert _smallest_text(fig) >= figures.LABEL_PT
    renderer, axes = _boxes(fig)
    cell = axes[0].get_window_extent(renderer).width / 16  # pixels per cell
    text = max(t.get_window_extent(renderer).width for t in axes[0].texts)
    assert text < cell  # every number fits inside its cell


def test_bar_figures_count_layers_in_whole_numbers(tmp_path, drawn):
    figures.bars([0.5, -0.2, 1.5], tmp_path / "b.png", "FFN importance", "layer", "drop x100")
    figures.bar_panels({"copa": [0.5, -0.2], "rte": [0.1, 0.3]}, tmp_path / "bp.png", "per task", "layer", "drop")
    for fig in drawn:
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks)
