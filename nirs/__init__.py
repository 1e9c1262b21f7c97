"""The spectroscopy domain: data, operators, pipeline configs, cross-validated fitting. Never imports Prefect or storage."""
