"""The loop's stages, one package each, in data-flow order: generate -> filter -> review
-> caption -> train -> evaluate. Each stage package has a ``stage`` module with
``<stage>_identity`` (fingerprint + output folder) and ``run_<stage>``. Stages hand each
other only the typed results of :mod:`.results`, sealed and checked through
:mod:`.contract`; no stage package imports another. :mod:`.layout` names the folders.
"""
