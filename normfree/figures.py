"""The one matplotlib set-up: a file backend (no screen needed) and figures saved atomically."""

import io

from .files import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported here: matplotlib is slow to import)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=110, **kwargs):
    """Write `fig` as PNG to `path` (parent folders created) and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **kwargs)
    pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
