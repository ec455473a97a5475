"""The one matplotlib set-up: figures made without pyplot and saved atomically.

A `matplotlib.figure.Figure` renders through Agg when saved, so nothing here chooses a backend,
registers a figure with pyplot or needs a screen: a user's own matplotlib session (its backend,
its open figures) is left as it was.
"""

import io

from .files import atomic_write


def subplots(*args, figsize=None, **kwargs):
    """(figure, axes) as `pyplot.subplots` returns them, for a figure that `save_figure` writes
    (matplotlib is imported here: it is slow to import)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig, path, dpi=110, **kwargs):
    """Write `fig` as PNG to `path`, whose folder must exist (as for every file normfree
    writes: `files.atomic_write`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **kwargs)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
