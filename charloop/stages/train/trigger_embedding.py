"""Pivotal tuning: the trigger as new text-encoder tokens, trained beside the LoRA.

The trigger phrase becomes ``n`` new tokens, named as diffusers names a multi-vector
textual inversion (``"zxq kira"``, ``"zxq kira_1"``, ...), so the saved embedding loads
with ``load_textual_inversion(..., token=trigger)`` and prompts keep the plain trigger.
Their vectors start from a text (the character's traits in words: by default one vector
per trait, the mean of its words' embeddings) and train with the LoRA; every other row of
the table stays frozen.

The adapter folder's ``trigger_embedding.safetensors`` holds one ``(n, dim)`` tensor per
text encoder under the key A1111 and ComfyUI read: ``emb_params`` (SD1.5), ``clip_l`` and
``clip_g`` (SDXL).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from charloop.families import ModelFamily
from charloop.models.trigger_embedding import (
    EMBEDDING_KEYS,
    TRIGGER_EMBEDDING,
    TRIGGER_KEY,
    check_family,
)
from charloop.params.project import Project
from charloop.stages.layout import PROVENANCE_PREFIX

logger = logging.getLogger(__name__)


def token_names(trigger: str, count: int) -> list[str]:
    """The new tokens of a ``count``-vector trigger, as diffusers names them."""
    return [trigger] + [f"{trigger}_{i}" for i in range(1, count)]


def starting_text(project: Project) -> str:
    """What the vectors start as (``train.trigger_embedding.init``): the character's traits
    in words (declared, then discovered), else its description, else the trigger."""
    member = project.params.members[0]
    if project.params.train.trigger_embedding.init == "trigger":
        return member.trigger
    traits = list(member.traits)
    if project.params.traits is not None:
        from charloop.scenes.traits import resolve_traits

        traits = resolve_traits(project)[member.name].all
    return ", ".join(traits) or member.description or member.trigger


@dataclass
class TriggerTokens:
    """The trigger's new tokens in each of the family's tokenizers.

    ``tokenizers`` are copies with the tokens added (the shared pipeline's own tokenizers
    stay untouched); ``init_ids`` holds, per tokenizer, one group of token ids per vector:
    the vector starts as the mean of their embeddings.
    """

    trigger: str
    tokens: list[str]
    text: str
    tokenizers: dict[str, Any]
    init_ids: dict[str, list[list[int]]]
    free: int = 0
    """The last ``free`` vectors start as the trigger phrase and are never pulled."""

    def expand(self, caption: str) -> str:
        """``caption`` with the trigger spelled as its tokens (what the encoder reads)."""
        return caption.replace(self.trigger, " ".join(self.tokens))

    def tokenizer_view(self) -> Any:
        """An object whose tokenizer attributes are the extended copies (for
        ``ModelFamily.token_ids``)."""
        return SimpleNamespace(**self.tokenizers)

    def new_ids(self, tokenizer_name: str) -> list[int]:
        ids = self.tokenizers[tokenizer_name].convert_tokens_to_ids(self.tokens)
        return [int(i) for i in ids]


def trigger_tokens(project: Project, pipe: Any, family: ModelFamily) -> TriggerTokens:
    """The trigger's tokens for ``pipe``'s tokenizers, starting from ``starting_text``.

    Raises:
        EmbeddingUnsupported: the family has no CLIP-only text encoders (FLUX).
    """
    check_family(family.name)
    settings = project.params.train.trigger_embedding
    trigger = project.params.members[0].trigger
    text = starting_text(project)
    phrases = [p.strip() for p in text.split(",") if p.strip()]
    init_ids: dict[str, list[list[int]]] = {}
    tokenizers: dict[str, Any] = {}
    for name in family.tokenizers:
        original = getattr(pipe, name)
        words = [list(original(p, add_special_tokens=False).input_ids) for p in phrases]
        groups = words if settings.vectors == "per_trait" else [[i] for w in words for i in w]
        init_ids[name] = [g for g in groups if g][: settings.max_vectors]
        tokenizers[name] = copy.deepcopy(original)
    count = min(len(groups) for groups in init_ids.values())
    free = settings.free_vectors
    for name, groups in init_ids.items():
        own = list(getattr(pipe, name)(trigger, add_special_tokens=False).input_ids)
        init_ids[name] = groups[:count] + [own] * free
    tokens = token_names(trigger, count + free)
    for tokenizer in tokenizers.values():
        tokenizer.add_tokens(tokens)
    logger.info(
        "train: trigger embedding of %d vectors, starting as %r (+%d free)", count, text, free
    )
    return TriggerTokens(trigger, tokens, text, tokenizers, init_ids, free)


class TriggerVectors(torch.nn.Module):
    """A frozen token-embedding table with trainable rows for the trigger's tokens."""

    def __init__(
        self, table: torch.nn.Embedding, ids: list[int], start: torch.Tensor, free: int = 0
    ) -> None:
        super().__init__()
        self.free = free
        """The last ``free`` rows are never pulled toward their start."""
        self.table = table
        self.ids: torch.Tensor
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.vectors = torch.nn.Parameter(start.detach().float().clone())
        self.start: torch.Tensor
        self.register_buffer("start", start.detach().float().clone(), persistent=False)
        self.rows = max(table.num_embeddings, max(ids) + 1)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table, trigger rows included (what ``get_input_embeddings`` users read)."""
        weight = self.table.weight
        if self.rows > weight.shape[0]:
            pad = weight.new_zeros(self.rows - weight.shape[0], weight.shape[1])
            weight = torch.cat([weight, pad])
        return weight.index_put((self.ids,), self.vectors.to(weight.dtype))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(input_ids, self.weight)


def attach_vectors(encoder: Any, tokens: TriggerTokens, tokenizer_name: str) -> TriggerVectors:
    """Give ``encoder`` trainable trigger rows, each starting as the mean embedding of its
    group in ``tokens.init_ids``; the rest of its table stays frozen."""
    table = encoder.get_input_embeddings()
    weight = table.weight.detach().float()
    start = torch.stack([weight[group].mean(0) for group in tokens.init_ids[tokenizer_name]])
    vectors = TriggerVectors(table, tokens.new_ids(tokenizer_name), start, tokens.free)
    encoder.set_input_embeddings(vectors)
    return vectors


def pull_toward_start(encoders: Any, fraction: float) -> None:
    """Move every encoder's trigger vectors ``fraction`` of the way back to their starting
    text (``train.trigger_embedding.pull``), the free vectors excepted; nothing when 0."""
    if not fraction:
        return
    with torch.no_grad():
        for encoder in encoders:
            if (trigger := vectors_of(encoder)) is not None:
                anchored = len(trigger.vectors) - trigger.free
                start = trigger.start[:anchored].to(trigger.vectors.device)
                trigger.vectors[:anchored].lerp_(start, fraction)


def vectors_of(encoder: Any) -> TriggerVectors | None:
    """The trigger rows attached to ``encoder``, if any."""
    table = encoder.get_input_embeddings()
    return table if isinstance(table, TriggerVectors) else None


def save_trigger_embedding(
    out_dir: Path, family: str, vectors: list[torch.Tensor], trigger: str, text: str
) -> Path:
    """Write ``trigger_embedding.safetensors`` (one tensor per text encoder)."""
    from safetensors.torch import save

    from charloop.core import atomic
    from charloop.core.safetensors_header import canonicalize

    keys = EMBEDDING_KEYS[family]
    tensors = {
        key: v.detach().float().cpu().contiguous() for key, v in zip(keys, vectors, strict=True)
    }
    metadata = {
        TRIGGER_KEY: trigger,
        PROVENANCE_PREFIX + "starting_text": text,
        "vectors": str(len(vectors[0])),
    }
    path = out_dir / TRIGGER_EMBEDDING
    atomic.write_bytes(path, save(tensors))
    canonicalize(path, metadata)  # sorted header: equal vectors, equal bytes
    return path
