"""The world tagger as a loadable trait scorer (``traits.scorer: {type: world}``).

A small CNN with one softmax head per character attribute of the procedural world (hair
colour, eye colour, outfit...), trained on world renders and their VAE reconstructions
(``charloop world build tagger``). It plays the part a WD14-style tagger plays for real
artwork: it tags the references (traits every reference shows are *discovered*) and scores
each candidate on each trait. It is a separate model from the world oracle, which stays
the measuring instrument only (own data, seed and width).

Its vocabulary comes from ``config.json``: ``tags`` (attribute -> one tag phrase per
value, e.g. ``hair_colour -> ["red hair", ...]``) and ``compounds`` (phrases naming two
values at once, e.g. ``"pink jacket" -> [["outfit_colour", "pink"], ["outfit_kind",
"jacket"]]``), so the prompt phrases of the world parse as traits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from charloop.models.world_embedder import Backbone, images_to_tensor, load_state

Part = tuple[str, str]
"""One (attribute, value) a trait phrase names."""


class TaggerNet(nn.Module):
    """Backbone with one linear head per attribute (logits over its values); the world
    oracle (``charloop_world.oracle``) is the same network at another width."""

    def __init__(self, attributes: dict[str, list[str]], width: int = 24, features: int = 192):
        super().__init__()
        self.attributes = attributes
        self.backbone = Backbone(width, features)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(features, len(values)) for name, values in attributes.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute."""
        h = self.backbone(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def probabilities(self, images: list[Image.Image]) -> dict[str, np.ndarray]:
        """Attribute -> ``(n, n_values)`` softmax probabilities (batches of 256)."""
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.attributes}
        for i in range(0, len(images), 256):
            logits = self(images_to_tensor(images[i : i + 256]))
            for name, value in logits.items():
                out[name].append(value.softmax(-1).numpy())
        return {name: np.concatenate(parts) for name, parts in out.items()}


class WorldTagger:
    """Tags pictures of world characters and scores trait phrases on them."""

    kind = "world"

    def __init__(
        self,
        net: TaggerNet,
        tags: dict[str, list[str]],
        compounds: dict[str, list],
        order: list[str] | None = None,
    ):
        self.net = net.eval()
        self.tags = tags
        self.order = order or list(net.attributes)
        """Attributes in the order the world's captions name them (tags are listed so)."""
        self.phrases: dict[str, list[Part]] = {
            tag: [(name, value)]
            for name, values in net.attributes.items()
            for tag, value in zip(tags[name], values, strict=True)
        }
        self.phrases.update({k: [(a, v) for a, v in parts] for k, parts in compounds.items()})

    @property
    def vocabulary(self) -> list[str]:
        """Every single-value tag, in caption order (what reference tagging proposes)."""
        return [tag for name in self.order for tag in self.tags[name]]

    def merge(self, traits: list[str]) -> list[str]:
        """``traits`` with each pair of tags a compound names at once (``pink clothes`` and
        ``wearing a jacket``) replaced by the compound (``pink jacket``), at the first's
        place: the most specific tag, as the world's captions say it."""
        out = list(traits)
        for compound, parts in self.phrases.items():
            if len(parts) < 2:
                continue
            singles = [t for t in out if (p := self.parse(t)) and len(p) == 1 and p[0] in parts]
            if len(singles) == len(parts):
                out[out.index(singles[0])] = compound
                out = [t for t in out if t not in singles[1:]]
        return out

    def parse(self, trait: str) -> list[Part] | None:
        """The (attribute, value) parts a trait phrase names; None when it names none."""
        return self.phrases.get(" ".join(trait.lower().split()))

    def probabilities(self, images: list[Image.Image]) -> dict[str, np.ndarray]:
        """Attribute -> ``(n, n_values)`` softmax probabilities."""
        return self.net.probabilities(images)

    def score(self, images: list[Image.Image], traits: list[str]) -> np.ndarray:
        """``(n_images, n_traits)`` probability that each image shows each trait (a compound
        phrase scores its weakest part).

        Raises:
            KeyError: a trait the vocabulary cannot parse.
        """
        parts = []
        for trait in traits:
            parsed = self.parse(trait)
            if parsed is None:
                raise KeyError(trait)
            parts.append(parsed)
        if not images:
            return np.zeros((0, len(traits)), dtype=np.float32)
        probs = self.probabilities(images)
        columns = [
            np.min(
                [probs[name][:, self.net.attributes[name].index(value)] for name, value in p],
                axis=0,
            )
            for p in parts
        ]
        return np.stack(columns, axis=1).astype(np.float32)

    def tag(self, images: list[Image.Image]) -> np.ndarray:
        """``(n_images, len(vocabulary))`` probability of every vocabulary tag."""
        return self.score(images, self.vocabulary)


def load_world_tagger(path: str | Path) -> WorldTagger:
    """Load a tagger saved by ``charloop world build tagger`` (``models/world-tagger``).

    Raises:
        ValueError: the folder holds another kind of model.
    """
    state, config = load_state(path)
    if config.get("kind") != "world-tagger":
        raise ValueError(f"{path} is a {config.get('kind')!r} model, not a world-tagger")
    net = TaggerNet(config["attributes"], config["width"], config["features"])
    net.load_state_dict(state)
    return WorldTagger(net, config["tags"], config.get("compounds", {}), config.get("order"))
