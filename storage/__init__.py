"""nirsflow's workspace: a DuckDB store plus content-addressed artifacts. Never imports Prefect."""
