"""Train: a peft LoRA through accelerate, with cached latents and embeddings, checkpoints,
kohya export and per-character cast LoRAs.
"""
