"""What to draw and how it is drawn, shared by the stages that render: context matrices
and prompts, seeds, reference sets, rendering jobs in batches, cast strips.
"""
