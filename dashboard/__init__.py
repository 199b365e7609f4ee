"""The Streamlit dashboard: ``app.py`` renders, ``figures.py`` builds the figures (plotly, and
the task graph as a Vega-Lite spec).

Nothing here imports torch: the pages read the study through :mod:`pitune_core.study.read.reader`
and launch runs through :mod:`pitune_core.runs`.
"""
