"""Loading models: base pipelines (:mod:`.pipeline`), image/text embedders
(:mod:`.embedder`, :mod:`.world_embedder`), the encode cache keyed on model identity, and
the tiny models the project builds for offline runs. Model families will live here.
"""
