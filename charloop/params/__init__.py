"""The params.yaml schema (one pydantic model, one module per section) and
:mod:`.project`, which loads and validates a file and derives the lineage branch.
"""
