"""The sandbox image's matplotlib backend: ``MPLBACKEND=module://athena_figures_backend``.

Agg renders; ``plt.show()`` saves every open figure as PNG into the call's figures directory
and closes them, as a notebook displays them (see :mod:`athena_figures`); with capture off it
does nothing, as Agg's does. pyplot imports this module when it first needs a backend, and
reads its attributes with ``vars()``: they are real, so Agg is imported here.
"""

from __future__ import annotations

import athena_figures
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

backend_version = "athena (agg)"
FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def show(*, block: bool | None = None) -> None:
    """Hand every open figure back and close them (``block`` is accepted and ignored)."""
    athena_figures.show()
