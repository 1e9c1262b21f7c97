"""Prefect tasks: thin units of work over nirs and storage."""
