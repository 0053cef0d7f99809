"""Training checkpoints: LoRA weights, optimizer, scheduler and RNG state, saved atomically.

Only the LoRA layers are saved (not the frozen base weights), so a checkpoint of an
SD1.5 LoRA is a few MB rather than gigabytes.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from charloop.core import atomic

logger = logging.getLogger(__name__)

KEEP = 2


class Checkpointer:
    """Saves ``step-NNNNNN.pt`` files every ``every`` steps under ``root``; keeps the last two."""

    def __init__(self, root: Path, every: int | None) -> None:
        self.root = root
        self.every = every

    def due(self, step: int, max_steps: int) -> bool:
        return self.every is not None and step % self.every == 0 and step < max_steps

    def _files(self) -> list[Path]:
        return sorted(self.root.glob("step-*.pt")) if self.root.is_dir() else []

    def latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint's state, or None."""
        for path in reversed(self._files()):
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception:  # a torn file from a crash mid-write cannot exist (atomic), but
                logger.warning("checkpoint %s is unreadable; trying an older one", path)
        return None

    def save(
        self,
        step: int,
        accelerator: Any,
        models: Any,
        optimizer: Any,
        scheduler: Any,
        generator: torch.Generator,
        order: list[int],
        log: dict[str, Any],
    ) -> None:
        """Write the state after ``step`` (main process only) and prune old checkpoints."""
        from peft.utils import get_peft_model_state_dict

        if not accelerator.is_main_process:
            return
        te = models.text_encoder
        state = {
            "step": step,
            "unet_lora": get_peft_model_state_dict(accelerator.unwrap_model(models.unet)),
            "te_lora": get_peft_model_state_dict(accelerator.unwrap_model(te)) if te else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
            "generator": generator.get_state(),
            "order": list(order),
            "log": log,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic.write_bytes(self.root / f"step-{step:06d}.pt", buffer.getvalue())
        for old in self._files()[:-KEEP]:
            old.unlink(missing_ok=True)
        logger.info("train: checkpoint at step %d", step)

    @staticmethod
    def restore(
        state: dict[str, Any], accelerator: Any, models: Any, optimizer: Any, scheduler: Any
    ) -> int:
        """Load a saved state into the prepared models and optimizer; returns its step."""
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(accelerator.unwrap_model(models.unet), state["unet_lora"])
        if models.text_encoder is not None and state["te_lora"] is not None:
            set_peft_model_state_dict(
                accelerator.unwrap_model(models.text_encoder), state["te_lora"]
            )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state["scaler"] is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        return int(state["step"])

    def clear(self) -> None:
        """Remove the checkpoints once the adapter is safely written."""
        shutil.rmtree(self.root, ignore_errors=True)
