"""Training checkpoints: LoRA weights, optimizer, scheduler and RNG state, saved atomically.

Only the LoRA layers are saved (not the frozen base weights), so a checkpoint of an
SD1.5 LoRA is a few MB rather than gigabytes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from charloop.core import atomic
from charloop.stages.train.trigger_embedding import vectors_of

logger = logging.getLogger(__name__)

KEEP = 2


class Checkpointer:
    """Saves ``step-NNNNNN.pt`` files every ``every`` steps under ``root``; keeps the last two."""

    def __init__(self, root: Path, every: int | None) -> None:
        self.root = root
        self.every = every
        if root.is_dir():  # a killed run's half-written checkpoint
            atomic.sweep_leftovers(root)

    def due(self, step: int, max_steps: int) -> bool:
        return self.every is not None and step % self.every == 0 and step < max_steps

    def _files(self) -> list[Path]:
        return sorted(self.root.glob("step-*.pt")) if self.root.is_dir() else []

    def latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint's state, or None.

        Checkpoints are read weights-only: tensors, numbers, strings and containers, never
        arbitrary objects, so a pickle planted in the work folder cannot run code here. A
        refused file is reported by name and skipped (an older checkpoint, or a fresh start).
        """
        for path in reversed(self._files()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                logger.error(
                    "checkpoint %s REFUSED: it holds objects other than weights (%s); it was "
                    "not written by charloop, delete it and check who can write %s",
                    path,
                    str(exc).splitlines()[0][:200],
                    self.root,
                )
            except Exception:  # a torn file cannot exist (atomic writes), but be safe
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
        encoders = {n: accelerator.unwrap_model(e) for n, e in models.text_encoders.items()}
        state = {
            "step": step,
            "unet_lora": get_peft_model_state_dict(accelerator.unwrap_model(models.denoiser)),
            "te_lora": {
                name: get_peft_model_state_dict(encoder)
                for name, encoder in encoders.items()
                if hasattr(encoder, "peft_config")  # trigger vectors alone add no LoRA
            },
            "trigger_vectors": {
                name: found.vectors.detach().cpu().clone()
                for name, encoder in encoders.items()
                if (found := vectors_of(encoder)) is not None
            },
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

        set_peft_model_state_dict(accelerator.unwrap_model(models.denoiser), state["unet_lora"])
        for name, encoder in models.text_encoders.items():
            module = accelerator.unwrap_model(encoder)
            if name in state["te_lora"]:
                set_peft_model_state_dict(module, state["te_lora"][name])
            if (found := vectors_of(module)) is not None:
                with torch.no_grad():
                    found.vectors.copy_(state["trigger_vectors"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state["scaler"] is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        return int(state["step"])

    def clear(self) -> None:
        """Remove the checkpoints once the adapter is safely written (and their folder,
        when no other configuration's checkpoints are left in it)."""
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):  # other configurations' checkpoints remain
            self.root.parent.rmdir()
