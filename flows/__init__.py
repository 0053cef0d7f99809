"""Prefect flows: orchestration only; every stage's work lives in ``tasks/`` and ``charloop``."""
