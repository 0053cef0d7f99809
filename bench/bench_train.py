"""Training speed: cached latents and text embeddings vs encoding every step.

The naive reference is what diffusers' ``train_text_to_image_lora.py`` does: each step
loads the batch's images, runs the VAE encoder and the text encoder, then the UNet. The
cached run encodes each image and caption once (cold on-disk cache, timed), then trains.
Same tiny model, dataset, LoRA, seed, batch size and steps. Each variant runs in its own
subprocess so its peak memory (max RSS) is its own.

Usage: ``python bench/bench_train.py [--steps 40] [--images 24]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(folder: Path, images: int, base: str | None = None) -> Path:
    """A captioned dataset from the base model (generate -> filter -> review -> caption);
    ``base`` overrides the tiny model (e.g. models/world-sd15)."""
    from charloop.params.project import load_project
    from charloop.stages.caption.stage import run_caption
    from charloop.stages.filter.stage import run_filter
    from charloop.stages.generate.stage import run_generate
    from charloop.stages.review.stage import run_review

    sys.path.insert(0, str(ROOT))
    from tests.conftest import tiny_params, write_params

    params = tiny_params(
        generate={"images_per_prompt": images // 4, "batch_size": 8, "num_inference_steps": 2},
        filter={"discriminators": [], "min_kept": 1},
    )
    if base:
        params["base_model"] = {"path": str(ROOT / base), "device": "cpu"}
    project = load_project(write_params(folder, params))
    generated = run_generate(project, 1, None, folder / "gen")
    filtered = run_filter(project, generated, folder / "filt")
    reviewed = run_review(generated, filtered, None, folder / "rev")
    run_caption(project, generated, reviewed, folder / "data")
    return folder


def run_variant(folder: Path, variant: str, steps: int) -> dict[str, float]:
    """Train in this process; returns seconds and peak RSS."""
    from charloop.models.encode_cache import EncodeCache
    from charloop.models.pipeline import load_pipeline
    from charloop.params.project import load_project
    from charloop.params.train import TrainParams
    from charloop.stages.train.data import ModelIdentity, encode_rows, read_rows
    from charloop.stages.train.loop import train_lora
    from charloop.stages.train.models import build_models, make_accelerator

    project = load_project(folder / "params.yaml")
    ref = project.model_ref(project.params.base_model.path)
    pipe = load_pipeline(ref, project.params.base_model)
    tp = TrainParams(max_train_steps=steps, batch_size=4, min_snr_gamma=None)
    accelerator = make_accelerator(tp, torch.device("cpu"))
    models = build_models(ref, None, tp, accelerator)
    rows = read_rows(folder / "data")
    started = time.perf_counter()
    if variant == "cached":
        cache = EncodeCache(Path(tempfile.mkdtemp()) / "cache")
        data = encode_rows(pipe, folder / "data", rows, 64, ModelIdentity(ref), cache)
        train_lora(accelerator, models, data, tp)
    else:
        naive_loop(pipe, models, folder / "data", rows, tp)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb}


def naive_loop(pipe, models, folder, rows, tp) -> None:
    """Encode the batch's images and captions inside every step, then the LoRA step."""
    from charloop.stages.train.images import load_image_tensor
    from charloop.stages.train.loop import denoising_loss

    trainable = [p for p in models.denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tp.learning_rate)
    generator = torch.Generator("cpu").manual_seed(tp.seed)
    for _ in range(tp.max_train_steps):
        batch = torch.randint(0, len(rows), (tp.batch_size,), generator=generator).tolist()
        pixels = torch.stack([load_image_tensor(folder / rows[i]["file_name"], 64) for i in batch])
        with torch.no_grad():
            latents = pipe.vae.encode(pixels).latent_dist.sample(generator)
            latents = latents * pipe.vae.config.scaling_factor
            ids = pipe.tokenizer(
                [rows[i]["text"] for i in batch],
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            cond = pipe.text_encoder(ids)[0]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (len(batch),), generator=generator)
        loss = denoising_loss(
            models, latents, {"encoder_hidden_states": cond}, noise, timesteps, None
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--base", help="base model folder (default: the tiny test model)")
    parser.add_argument("--variant", choices=["cached", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(Path(args.folder), args.variant, args.steps)))
        return
    folder = make_dataset(Path(tempfile.mkdtemp(prefix="bench-train-")), args.images, args.base)
    results = {}
    for variant in ("naive", "cached"):
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--folder", str(folder),
             "--steps", str(args.steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    naive, cached = results["naive"], results["cached"]
    model = args.base or "tiny test model"
    print(f"{model}: {args.steps} steps, batch 4, {args.images} images at 64 px, CPU")
    for label, result in (("naive (encode every step)", naive), ("cached (encode once)", cached)):
        print(f"{label:26} {result['seconds']:7.2f} s  peak RSS {result['peak_rss_mb']:.0f} MB")
    print(f"ratio:                     {naive['seconds'] / cached['seconds']:7.2f}x faster")


if __name__ == "__main__":
    main()
