"""Caption: the kohya-style training dataset, trigger first, then structured tags."""
