"""The deletion and insertion curves of a :class:`~napari_unet_gradcam.faithfulness.MapChecks` as a figure.

One function draws them for both faces: the widget puts the figure in a Qt canvas, the CLI saves
it as a PNG. matplotlib is optional (the ``[napari]`` extra brings it); it is imported here only,
and only the object-oriented ``Figure`` is used, never pyplot, so no GUI backend is ever chosen.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import UnetGradcamError
from .faithfulness import MapChecks

INSTALL_HINT = "The curves plot needs matplotlib: pip install matplotlib"


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UnetGradcamError(INSTALL_HINT) from exc
    return Figure


def plot_curves(checks: MapChecks, figure=None, highlight: tuple[str, int] | None = None):
    """Deletion (top row) and insertion (bottom row) curves, one column per class.

    Each map is a solid line coloured by its layer, the class's random-order curve dashed black.
    ``highlight`` (layer, class index) draws that map thick and the others faint. Draws into
    ``figure`` (cleared first) or a new ``matplotlib.figure.Figure``; returns it.
    """
    fig = figure if figure is not None else _figure_class()(figsize=(3.2 * max(1, _n_classes(checks)), 5.2))
    fig.clear()
    classes = list(dict.fromkeys(c.class_index for c in checks.checks))
    names = {c.class_index: c.class_name for c in checks.checks}
    layers = list(dict.fromkeys(c.layer for c in checks.checks))
    colours = {ly: f"C{i % 10}" for i, ly in enumerate(layers)}
    axes = fig.subplots(2, len(classes), squeeze=False, sharex=True, sharey="row")
    x = [100 * s for s in checks.steps]
    rows = (("deletion", checks.random_deletion), ("insertion", checks.random_insertion))
    for j, cls in enumerate(classes):
        for i, (what, random) in enumerate(rows):
            ax = axes[i][j]
            for c in (c for c in checks.checks if c.class_index == cls):
                chosen = highlight is None or c.key == tuple(highlight)
                ax.plot(
                    x,
                    getattr(c, what),
                    color=colours[c.layer],
                    lw=2.4 if highlight is not None and chosen else 1.4,
                    alpha=1.0 if chosen else 0.25,
                    label=c.layer,
                )
            ax.plot(x, random.get(cls, [math.nan] * len(x)), "k--", lw=1.2, label="random order")
            ax.set_title(f"{names[cls]}: {what}", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if i == 1:
                ax.set_xlabel("% of pixels by the map's order", fontsize=8)
            if j == 0:
                ax.set_ylabel("normalised score", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"{checks.method or 'maps'}, {checks.baseline} baseline: deletion falls fast and insertion rises fast "
        "for a faithful map",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def _n_classes(checks: MapChecks) -> int:
    return len({c.class_index for c in checks.checks})


def save_curves_png(checks: MapChecks, path: str | Path, file=None) -> None:
    """The curves as a PNG at ``path`` (or into the open binary ``file``, named ``path``)."""
    fig = plot_curves(checks)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(file if file is not None else path, format="png", dpi=110)
