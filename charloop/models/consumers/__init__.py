"""Static checks of LoRA files against the loading rules of the tools that consume them."""
