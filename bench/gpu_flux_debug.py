"""Find which part of a FLUX transformer's bf16 training step fails on a CUDA build.

Each variant runs in its own process (an illegal memory access poisons the CUDA context)
with CUDA_LAUNCH_BLOCKING=1 and autograd anomaly mode, so a failure names the op. Usage:
``python bench/gpu_flux_debug.py`` (all variants) or ``python bench/gpu_flux_debug.py NAME``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = [
    "autocast",  # bf16 autocast over fp32 weights: what the world build does
    "cublaslt",  # bf16, cuBLASLt preferred (the FLUX family's setting)
    "math_sdpa",  # bf16, flash / memory-efficient / cuDNN attention off
    "fp32",
    "bf16_weights",  # bf16 weights under autocast: the 12 B check
    "single_only",  # no double-stream blocks
    "cublaslt_b32",  # the cuBLASLt setting at batch 32 instead of the build's 256
    "cublaslt_b64",
]


def step(name: str) -> None:
    import torch

    from charloop.families.flux import predict
    from charloop_world.arch.flux import build_transformer

    if name.startswith("cublaslt"):
        torch.backends.cuda.preferred_blas_library("cublaslt")
    if name == "math_sdpa":
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.autograd.set_detect_anomaly(True)
    dev = torch.device(os.environ.get("DEBUG_DEVICE", "cuda"))
    torch.manual_seed(0)
    model = build_transformer().to(dev)
    if name == "bf16_weights":
        model = model.to(torch.bfloat16)
    if name == "single_only":
        model.transformer_blocks = torch.nn.ModuleList()
    # The world build's geometry (batch 256, 16x16 latents -> 64 packed tokens, 64 text
    # tokens): on 2026-12-04 the build failed where batch 8 of 8x8 latents had passed, in a
    # bf16 batched GEMM of m 64, n 16384 (= 256 x 64), k 128 even with cuBLASLt preferred.
    b = int(name.rsplit("_b", 1)[1]) if "_b" in name else int(os.environ.get("DEBUG_BATCH", 256))
    side, text = int(os.environ.get("DEBUG_SIDE", 16)), 64
    noisy = torch.randn(b, 16, side, side, device=dev)
    cond = {
        "encoder_hidden_states": torch.randn(b, text, model.config.joint_attention_dim, device=dev),
        "pooled_projections": torch.randn(b, model.config.pooled_projection_dim, device=dev),
    }
    sigmas = torch.rand(b, device=dev)
    use_autocast = name not in ("fp32",)
    for _ in range(3):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_autocast):
            out = predict(model, noisy, sigmas, cond, 1.0)
            loss = out.float().pow(2).mean()
        loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    if len(sys.argv) > 1:
        try:
            step(sys.argv[1])
            print(f"{sys.argv[1]}: OK", flush=True)
        except Exception:
            lines = traceback.format_exc().strip().splitlines()
            print(f"{sys.argv[1]}: FAIL\n  " + "\n  ".join(lines[-14:]), flush=True)
            sys.exit(1)
        return
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    for name in VARIANTS:
        try:
            run = subprocess.run(
                [sys.executable, __file__, name],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            text = (run.stderr + run.stdout).strip().splitlines()  # the verdict last
            keep = [ln for ln in text if "float32" not in ln and "warn" not in ln.lower()]
            print("\n".join(keep[-30:]), flush=True)
        except subprocess.TimeoutExpired:
            print(f"{name}: TIMEOUT", flush=True)


if __name__ == "__main__":
    main()
