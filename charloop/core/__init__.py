"""Plumbing with no knowledge of the loop: atomic writes, content hashes, the library's
import graph (code fingerprints), locks, failpoints, progress bars, contact sheets and
safetensors headers. Imports nothing else from charloop.
"""
