"""Prefect flows (train, score inbox, maintenance) and the CLI."""
