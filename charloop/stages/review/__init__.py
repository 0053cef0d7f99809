"""Review: a person overrides the filter's decisions (Prefect form or review sheet)."""
