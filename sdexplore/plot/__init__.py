"""Matplotlib figures of traces. Every function returns its Figure (never only shows it).

Imported inside IPython/Jupyter, this package registers a PNG formatter for Figures
(``sdexplore.notebook``), so a cell ending in ``fig`` shows the picture, not ``<Figure ...>``.
"""

from ..notebook import show_figures_as_pictures

show_figures_as_pictures()
