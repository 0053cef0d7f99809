"""Attribute vocabularies of the procedural character world.

A character is one value per character attribute (:class:`CharacterSpec`); a picture of it
also has a :class:`Context` (setting, style, pose, expression). Every value has a simple
English phrase usable in prompts ("red hair", "wearing a hat", "in a forest").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

RGB = tuple[int, int, int]

HAIR_COLOURS: dict[str, RGB] = {
    "red": (205, 40, 30),
    "blonde": (240, 208, 95),
    "black": (28, 28, 34),
    "teal": (30, 170, 160),
    "purple": (130, 55, 185),
    "white": (238, 238, 242),
}
HAIR_SHAPES = ("short", "long", "ponytail", "spiky")
EYE_COLOURS: dict[str, RGB] = {
    "blue": (40, 90, 230),
    "green": (40, 175, 60),
    "brown": (105, 60, 25),
    "amber": (235, 150, 15),
}
SKIN_TONES: dict[str, RGB] = {
    "pale": (255, 226, 208),
    "light": (232, 188, 150),
    "tan": (190, 130, 85),
    "dark": (110, 72, 48),
}
OUTFIT_COLOURS: dict[str, RGB] = {
    "blue": (45, 85, 205),
    "green": (45, 150, 65),
    "yellow": (235, 205, 35),
    "orange": (240, 125, 25),
    "pink": (240, 115, 170),
    "gray": (125, 125, 135),
}
OUTFIT_KINDS = ("jacket", "dress", "robe", "armor")
ACCESSORIES = ("none", "hat", "glasses", "scarf", "star badge")
BODY_SHAPES = ("slim", "average", "stocky")

SETTINGS = ("forest", "spaceship", "bar", "beach", "city", "library")
STYLES = ("flat", "outlined", "pixel art", "sketch")
POSES = ("standing", "arms up", "sitting")
EXPRESSIONS = ("smiling", "serious", "surprised")

CHARACTER_VALUES: dict[str, tuple[str, ...]] = {
    "hair_colour": tuple(HAIR_COLOURS),
    "hair_shape": HAIR_SHAPES,
    "eye_colour": tuple(EYE_COLOURS),
    "skin_tone": tuple(SKIN_TONES),
    "outfit_colour": tuple(OUTFIT_COLOURS),
    "outfit_kind": OUTFIT_KINDS,
    "accessory": ACCESSORIES,
    "body_shape": BODY_SHAPES,
}
"""Character attribute -> its possible values (in field order of :class:`CharacterSpec`)."""

CONTEXT_VALUES: dict[str, tuple[str, ...]] = {
    "setting": SETTINGS,
    "style": STYLES,
    "pose": POSES,
    "expression": EXPRESSIONS,
}
"""Context attribute -> its possible values."""

ALL_VALUES: dict[str, tuple[str, ...]] = {**CHARACTER_VALUES, **CONTEXT_VALUES}


@dataclass(frozen=True)
class CharacterSpec:
    """One character: the attributes that stay fixed across all its pictures."""

    hair_colour: str
    hair_shape: str
    eye_colour: str
    skin_tone: str
    outfit_colour: str
    outfit_kind: str
    accessory: str
    body_shape: str

    def __post_init__(self) -> None:
        for name, values in CHARACTER_VALUES.items():
            if getattr(self, name) not in values:
                raise ValueError(f"{name}={getattr(self, name)!r} not in {values}")

    def as_dict(self) -> dict[str, str]:
        """Attribute -> value."""
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """A stable identity string, e.g. for grouping renders by character."""
        return "|".join(getattr(self, name) for name in CHARACTER_VALUES)


@dataclass(frozen=True)
class Context:
    """What varies between pictures of one character."""

    setting: str = "forest"
    style: str = "flat"
    pose: str = "standing"
    expression: str = "smiling"

    def __post_init__(self) -> None:
        for name, values in CONTEXT_VALUES.items():
            if getattr(self, name) not in values:
                raise ValueError(f"{name}={getattr(self, name)!r} not in {values}")

    def as_dict(self) -> dict[str, str]:
        """Attribute -> value."""
        return dataclasses.asdict(self)


def sample_character(rng: np.random.Generator) -> CharacterSpec:
    """A uniformly random character."""
    return CharacterSpec(**{k: str(rng.choice(v)) for k, v in CHARACTER_VALUES.items()})


def sample_context(rng: np.random.Generator) -> Context:
    """A uniformly random context."""
    return Context(**{k: str(rng.choice(v)) for k, v in CONTEXT_VALUES.items()})


def character_from_dict(values: dict[str, Any]) -> CharacterSpec:
    """Build a :class:`CharacterSpec` from an attribute record (extra keys are ignored)."""
    return CharacterSpec(**{k: str(values[k]) for k in CHARACTER_VALUES})


def context_from_dict(values: dict[str, Any]) -> Context:
    """Build a :class:`Context` from an attribute record (missing keys take defaults)."""
    return Context(**{k: str(values[k]) for k in CONTEXT_VALUES if k in values})


def record(character: CharacterSpec, context: Context) -> dict[str, str]:
    """The attribute record of one render: character and context attributes."""
    return {**character.as_dict(), **context.as_dict()}


_SETTING_PHRASES = {
    "forest": "in a forest",
    "spaceship": "on a spaceship",
    "bar": "in a bar",
    "beach": "on a beach",
    "city": "in a city",
    "library": "in a library",
}
_STYLE_PHRASES = {
    "flat": "flat colors style",
    "outlined": "outlined style",
    "pixel art": "pixel art style",
    "sketch": "sketch style",
}
_HAIR_SHAPE_PHRASES = {
    "short": "short hair",
    "long": "long hair",
    "ponytail": "ponytail",
    "spiky": "spiky hair",
}


def phrase(attribute: str, value: str) -> str:
    """The prompt phrase of one attribute value (outfit colour and kind also combine)."""
    if attribute == "hair_colour":
        return f"{value} hair"
    if attribute == "hair_shape":
        return _HAIR_SHAPE_PHRASES[value]
    if attribute == "eye_colour":
        return f"{value} eyes"
    if attribute == "skin_tone":
        return f"{value} skin"
    if attribute == "outfit_colour":
        return f"{value} clothes"
    if attribute == "outfit_kind":
        return f"wearing a {value}" if value != "armor" else "wearing armor"
    if attribute == "accessory":
        if value == "none":
            return "no accessory"
        return "wearing glasses" if value == "glasses" else f"wearing a {value}"
    if attribute == "body_shape":
        return f"{value} body"
    if attribute == "setting":
        return _SETTING_PHRASES[value]
    if attribute == "style":
        return _STYLE_PHRASES[value]
    if attribute in ("pose", "expression"):
        return value
    raise KeyError(attribute)


def outfit_phrase(colour: str | None, kind: str | None) -> str | None:
    """ "blue jacket", "blue clothes", "wearing a jacket", or None when both are left out."""
    if colour and kind:
        return f"{colour} {kind}"
    if colour:
        return phrase("outfit_colour", colour)
    if kind:
        return phrase("outfit_kind", kind)
    return None


WORLD_WORDS: tuple[str, ...] = (
    *dict.fromkeys(
        word
        for attribute, values in ALL_VALUES.items()
        for value in values
        for word in (phrase(attribute, value) + " " + value).split()
    ),
    *("a", "character", "clothes", "no", "accessory", "with", "and", "portrait", "of", "person"),
)
"""Every word that appears in world captions (each becomes a single token)."""
