"""The live session dashboard: an Airflow 3 plugin (FastAPI app + UI entry) over the results store.

`plugin.py` registers it (entry point `airflow.plugins`), `app.py` holds the routes (JSON API and pages),
`queries.py` the read-only aggregations, `images.py` which recorded images may be served, `access.py`
who may see what. See docs/dashboard.md.
"""
