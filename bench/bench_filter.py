"""Filter throughput on 1,000 images with every discriminator and the tiny CLIP embedder.

Reference: the same filter embedding one image per forward pass (the naive loop), measured
in the same run. Usage: ``python bench/bench_filter.py [--images 1000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from charloop.core.hashing import sha256_bytes
from charloop.models.embedder import load_embedder
from charloop.params.filter import (
    ClipEmbedder,
    DuplicatesCheck,
    FilterParams,
    IdentityCheck,
    PromptAdherenceCheck,
    QualityCheck,
)
from charloop.scenes.render import png_bytes
from charloop.stages.filter.stage import judge

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int) -> list[dict]:
    """Smooth random images (64 px), a few exact and near duplicates among them."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        cells = rng.random((8, 8, 3)) * 255
        image = Image.fromarray(cells.astype("uint8")).resize((64, 64), Image.Resampling.BICUBIC)
        data = png_bytes(image)
        (folder / f"{i}.png").write_bytes(data)
        rows.append({"id": str(i), "file": f"{i}.png", "sha256": sha256_bytes(data)})
    return rows


def run(rows, folder, batch_size, embedder) -> float:
    rules = FilterParams(
        discriminators=[DuplicatesCheck(), QualityCheck(), IdentityCheck(), PromptAdherenceCheck()],
        embed_batch_size=batch_size,
    )
    texts = ["a girl, flat colors, in a forest"] * len(rows)
    started = time.perf_counter()
    decisions, _, _ = judge(rows, folder, rules, embedder, None, texts)
    elapsed = time.perf_counter() - started
    assert len(decisions) == len(rows)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    embedder = load_embedder(ClipEmbedder(), str(ROOT / "models" / "tiny-clip"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = make_images(folder, args.images)
        naive = run(rows, folder, 1, embedder)
        batched = run(rows, folder, 64, embedder)
    print(f"images: {args.images}, discriminators: duplicates, quality, identity, prompt")
    print(f"embed batch 1:   {naive:7.2f} s  ({args.images / naive:7.1f} images/s, naive)")
    print(f"embed batch 64:  {batched:7.2f} s  ({args.images / batched:7.1f} images/s)")
    print(f"ratio:           {naive / batched:7.2f}x   target: 1,000 images < 60 s")


if __name__ == "__main__":
    main()
