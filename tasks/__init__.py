"""Thin Prefect tasks over the charloop library: caching, retries, artifacts, logging."""
