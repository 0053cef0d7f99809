"""Lineage: DVC versioning, the MLflow registry, publishing an iteration, provenance,
promotion and releases, lineage chains, reports and reference ingest.
"""
