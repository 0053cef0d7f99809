"""Generate: render the context matrix with the base model (plus the previous LoRA,
ControlNet maps and IP-Adapter identity conditioning); sharded for task runners.
"""
