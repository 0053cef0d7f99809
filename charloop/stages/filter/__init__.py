"""Filter: automatic discriminators (quality, duplicates, identity, prompt adherence,
cast identity blends) decide which generated images become training data.
"""
