"""The Streamlit dashboard: ``app.py`` renders, ``figures.py`` builds the plotly figures.

Nothing here imports torch: the pages read the study through :mod:`pitune_core.study.reader`
and launch runs through :mod:`pitune_core.runs`.
"""
