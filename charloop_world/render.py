"""Procedural renderer: one character in one context, deterministic by seed.

Drawn on a 2x supersampled canvas in a 64-unit coordinate frame, then downsampled, so
shapes stay large and readable at 64x64. The seed jitters position, scale and colours.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from charloop_world.attributes import (
    EYE_COLOURS,
    HAIR_COLOURS,
    OUTFIT_COLOURS,
    RGB,
    SKIN_TONES,
    CharacterSpec,
    Context,
)

_SS = 2  # supersampling factor
_BODY_WIDTH = {"slim": 13, "average": 18, "stocky": 24}
_PANTS: RGB = (45, 45, 58)
_MOUTH: RGB = (110, 30, 35)


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 14) -> RGB:
    values = np.asarray(colour) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(values, 0, 255))  # type: ignore[return-value]


def _darker(colour: RGB, factor: float = 0.7) -> RGB:
    return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]


class _Canvas:
    """Draws in 64-unit coordinates with an offset, scale and optional outline."""

    def __init__(self, image: Image.Image, dx: float, dy: float, scale: float):
        self.draw = ImageDraw.Draw(image)
        self.dx, self.dy, self.scale = dx, dy, scale
        self.outline: RGB | None = None

    def _pt(self, x: float, y: float) -> tuple[float, float]:
        return (
            (32 + (x - 32) * self.scale + self.dx) * _SS,
            (34 + (y - 34) * self.scale + self.dy) * _SS,
        )

    def _box(self, box: tuple[float, float, float, float]) -> list[float]:
        x0, y0 = self._pt(box[0], box[1])
        x1, y1 = self._pt(box[2], box[3])
        return [x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)]

    def rect(self, box: tuple[float, float, float, float], fill: RGB) -> None:
        self.draw.rectangle(self._box(box), fill=fill, outline=self.outline, width=_SS)

    def ellipse(self, box: tuple[float, float, float, float], fill: RGB) -> None:
        self.draw.ellipse(self._box(box), fill=fill, outline=self.outline, width=_SS)

    def chord(self, box: tuple[float, float, float, float], fill: RGB) -> None:
        self.draw.chord(self._box(box), 180, 360, fill=fill, outline=self.outline, width=_SS)

    def polygon(self, points: list[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon([self._pt(x, y) for x, y in points], fill=fill, outline=self.outline)

    def line(self, points: list[tuple[float, float]], fill: RGB, width: float = 1) -> None:
        self.draw.line([self._pt(x, y) for x, y in points], fill=fill, width=int(width * _SS))


def _background(setting: str, rng: np.random.Generator) -> Image.Image:
    size = 64 * _SS
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)

    def box(x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        draw.rectangle([x0 * _SS, y0 * _SS, x1 * _SS, y1 * _SS], fill=_jitter(rng, fill, 8))

    def disc(x: float, y: float, r: float, fill: RGB) -> None:
        draw.ellipse([(x - r) * _SS, (y - r) * _SS, (x + r) * _SS, (y + r) * _SS], fill=fill)

    if setting == "forest":
        box(0, 0, 64, 64, (70, 130, 70))
        box(0, 50, 64, 64, (50, 95, 40))
        for x in rng.uniform(0, 64, 4):
            box(x - 2, 14, x + 2, 54, (95, 62, 30))
            disc(x, 12, 9, _jitter(rng, (30, 95, 40)))
    elif setting == "spaceship":
        box(0, 0, 64, 64, (32, 38, 62))
        for v in range(0, 64, 16):
            box(v, 0, v + 1, 52, (70, 80, 110))
        box(0, 52, 64, 64, (95, 100, 115))
        for x, y in rng.uniform(2, 50, (5, 2)):
            disc(x, y, 1.5, (90, 240, 255) if rng.random() < 0.6 else (255, 60, 60))
    elif setting == "bar":
        box(0, 0, 64, 64, (120, 65, 35))
        box(0, 12, 64, 14, (75, 40, 20))
        for x in rng.uniform(2, 62, 6):
            box(x - 1.5, 4, x + 1.5, 12, _jitter(rng, (60, 150, 70), 40))
        box(0, 50, 64, 64, (70, 38, 18))
        disc(rng.uniform(5, 59), 3, 3, (255, 220, 120))
    elif setting == "beach":
        box(0, 0, 64, 30, (130, 200, 245))
        box(0, 30, 64, 40, (40, 115, 205))
        box(0, 40, 64, 64, (238, 214, 155))
        disc(rng.uniform(6, 58), 8, 5, (255, 235, 90))
    elif setting == "city":
        box(0, 0, 64, 64, (235, 150, 110))
        box(0, 0, 64, 20, (150, 100, 170))
        for x in rng.uniform(-4, 60, 5):
            top = rng.uniform(10, 30)
            box(x, top, x + 12, 56, (55, 52, 75))
            for wy in np.arange(top + 3, 52, 6):
                box(x + 3, wy, x + 5, wy + 2, (255, 225, 110))
        box(0, 56, 64, 64, (90, 90, 95))
    elif setting == "library":
        box(0, 0, 64, 64, (95, 32, 38))
        for y in (4, 22, 40):
            x = 0.0
            while x < 64:
                w = rng.uniform(2, 4)
                box(x, y + rng.uniform(0, 3), x + w - 0.5, y + 15, _jitter(rng, (150, 110, 60), 70))
                x += w
            box(0, y + 15, 64, y + 17, (60, 35, 20))
    else:
        raise ValueError(setting)
    return image


def _draw_character(c: _Canvas, ch: CharacterSpec, ctx: Context, rng: np.random.Generator) -> None:
    hair = _jitter(rng, HAIR_COLOURS[ch.hair_colour])
    skin = _jitter(rng, SKIN_TONES[ch.skin_tone], 8)
    eyes = EYE_COLOURS[ch.eye_colour]
    cloth = _jitter(rng, OUTFIT_COLOURS[ch.outfit_colour])
    w = _BODY_WIDTH[ch.body_shape]
    left, right = 32 - w / 2, 32 + w / 2
    sitting = ctx.pose == "sitting"
    hip = 47

    # back hair
    if ch.hair_shape == "long":
        c.rect((21, 14, 43, 42), hair)
    elif ch.hair_shape == "ponytail":
        c.ellipse((40, 17, 51, 44), hair)
    # legs / lower body
    if sitting:
        c.rect((left - 2, hip + 2, right + 8, hip + 7), (110, 70, 40))  # stool / bench
    if ch.outfit_kind in ("jacket", "armor"):
        pants = (150, 150, 160) if ch.outfit_kind == "armor" else _PANTS
        if sitting:
            c.rect((32 - 5, hip - 1, right + 10, hip + 3), pants)
            c.rect((right + 6, hip, right + 10, 61), pants)
        else:
            c.rect((32 - w / 2 + 1, hip - 1, 31, 61), pants)
            c.rect((33, hip - 1, 32 + w / 2 - 1, 61), pants)
    elif ch.outfit_kind == "dress":
        if sitting:
            c.rect((right + 5, hip + 2, right + 8, 61), skin)
        else:
            c.rect((28, 52, 30, 61), skin)
            c.rect((34, 52, 36, 61), skin)
    # torso
    if ch.outfit_kind == "dress":
        bottom = 50 if sitting else 55
        c.polygon([(left + 1, 30), (right - 1, 30), (right + 7, bottom), (left - 7, bottom)], cloth)
    elif ch.outfit_kind == "robe":
        c.rect((left - 3, 30, right + 3, 52 if sitting else 61), cloth)
        c.rect((left - 3, 41, right + 3, 43), _darker(cloth, 0.5))
    else:
        c.rect((left, 30, right, hip), cloth)
        if ch.outfit_kind == "jacket":
            c.polygon([(29, 30), (35, 30), (32, 40)], (235, 235, 235))
            c.line([(32, 40), (32, hip)], _darker(cloth, 0.6))
        else:  # armor
            c.rect((left, 36, right, 37.5), _darker(cloth, 0.6))
            c.rect((left, 41, right, 42.5), _darker(cloth, 0.6))
    # arms
    sleeve = cloth if ch.outfit_kind != "armor" else (165, 165, 175)
    arm_w = 5 if ch.outfit_kind == "robe" else 4
    for side in (-1, 1):
        x = 32 + side * (w / 2 + arm_w / 2)
        if ctx.pose == "arms up":
            c.rect((x - arm_w / 2, 12, x + arm_w / 2, 32), sleeve)
            c.ellipse((x - 2.5, 8, x + 2.5, 13), skin)
        else:
            c.rect((x - arm_w / 2, 31, x + arm_w / 2, 46), sleeve)
            c.ellipse((x - 2.5, 45, x + 2.5, 50), skin)
    if ch.outfit_kind == "armor":
        c.ellipse((left - 5, 27, left + 4, 35), (165, 165, 175))
        c.ellipse((right - 4, 27, right + 5, 35), (165, 165, 175))
    # head
    c.rect((30, 26, 34, 31), skin)
    c.ellipse((24, 12, 40, 29), skin)
    # front hair
    if ch.hair_shape == "spiky":
        for x in (23, 27, 31, 35, 39):
            c.polygon([(x - 3, 16), (x + 3, 16), (x + rng.uniform(-1, 1), 3)], hair)
        c.chord((23, 10, 41, 26), hair)
    else:
        c.chord((23, 9, 41, 27) if ch.hair_shape != "short" else (23.5, 10, 40.5, 25), hair)
        if ch.hair_shape == "long":
            c.rect((22, 16, 25, 34), hair)
            c.rect((39, 16, 42, 34), hair)
        elif ch.hair_shape == "ponytail":
            c.ellipse((39, 14, 44, 19), (200, 40, 60))
    # face
    outline, c.outline = c.outline, None
    big = ctx.expression == "surprised"
    for ex in (28, 36):
        c.rect((ex - 2, 19, ex + 2, 23 if big else 22), (250, 250, 250))
        c.rect((ex - 1.5, 19.5, ex + 1.5, 22.5 if big else 22), eyes)
    if ctx.expression == "smiling":
        c.line([(29, 24.5), (30.5, 26), (33.5, 26), (35, 24.5)], _MOUTH, 1)
    elif ctx.expression == "serious":
        c.line([(29.5, 25.5), (34.5, 25.5)], _MOUTH, 1)
    else:
        c.ellipse((30.5, 24, 33.5, 27.5), _MOUTH)
    c.outline = outline
    # accessory
    if ch.accessory == "hat":
        c.rect((19, 11, 45, 14), (80, 45, 25))
        c.rect((25, 3, 39, 12), (80, 45, 25))
        c.rect((25, 9, 39, 11), (240, 220, 60))
    elif ch.accessory == "glasses":
        c.outline = None
        for ex in (28, 36):
            c.draw.rectangle(c._box((ex - 3.5, 17.5, ex + 3.5, 24)), outline=(10, 10, 10), width=3)
        c.line([(31.5, 20), (32.5, 20)], (10, 10, 10), 1.5)
        c.outline = outline
    elif ch.accessory == "scarf":
        c.rect((left - 1, 28, right + 1, 32.5), (215, 25, 35))
        c.rect((34, 31, 38, 42), (215, 25, 35))
        c.rect((34, 35, 38, 36.5), (250, 250, 250))
    elif ch.accessory == "star badge":
        cx, cy, points = 32 - w / 4, 37, []
        for i in range(10):
            r = 4.5 if i % 2 == 0 else 2.0
            a = -np.pi / 2 + i * np.pi / 5
            points.append((cx + r * np.cos(a), cy + r * np.sin(a)))
        saved, c.outline = c.outline, (90, 60, 0)
        c.polygon(points, (255, 215, 0))
        c.outline = saved


def _desaturate(image: Image.Image, amount: float) -> Image.Image:
    grey = ImageOps.grayscale(image).convert("RGB")
    return Image.blend(image, grey, amount)


def render(character: CharacterSpec, context: Context, seed: int, size: int = 64) -> Image.Image:
    """Render one character in one context.

    Args:
        character: Who to draw.
        context: Setting, style, pose and expression.
        seed: Jitter of position, scale, colours and background props; same seed, same image.
        size: Output side in pixels (drawn at 64 units, resized).

    Returns:
        An RGB image of ``size`` x ``size``.
    """
    rng = np.random.default_rng(seed)
    image = _background(context.setting, rng)
    if context.style == "sketch":
        image = Image.blend(image, Image.new("RGB", image.size, (246, 242, 232)), 0.7)
    canvas = _Canvas(image, rng.uniform(-3, 3), rng.uniform(-2, 2), rng.uniform(0.92, 1.06))
    if context.style == "outlined":
        canvas.outline = (15, 15, 15)
    elif context.style == "sketch":
        canvas.outline = (70, 70, 70)
    _draw_character(canvas, character, context, rng)
    if context.style == "sketch":
        draw = ImageDraw.Draw(image)
        for _ in range(14):
            x, y = rng.uniform(0, 64 * _SS, 2)
            dx, dy = rng.normal(0, 14, 2)
            draw.line([(x, y), (x + dx, y + dy)], fill=(120, 120, 120), width=1)
    image = image.resize((64, 64), Image.Resampling.BOX)
    if context.style == "sketch":
        image = _desaturate(image, 0.45).filter(ImageFilter.SMOOTH)
    elif context.style == "pixel art":
        small = image.resize((32, 32), Image.Resampling.BOX)
        small = small.quantize(colors=12, method=Image.Quantize.MEDIANCUT).convert("RGB")
        image = small.resize((64, 64), Image.Resampling.NEAREST)
    if size != 64:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image
