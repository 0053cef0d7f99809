"""Contact sheets: labelled image grids for reports and reviews."""

from __future__ import annotations

from PIL import Image, ImageDraw

_LABEL_HEIGHT = 14
_GAP = 4
TILE = 96


def contact_sheet(
    panels: dict[str, list[Image.Image]],
    columns: int,
    row_labels: list[str] | None = None,
    tile: int = TILE,
) -> Image.Image:
    """Side-by-side grids, one per panel (e.g. rows are contexts, columns are seeds).

    Args:
        panels: Panel title -> images in row-major order (lengths may differ).
        columns: Images per row.
        row_labels: Optional caption drawn above each row.
        tile: Edge length each image is scaled to.
    """
    count = max((len(images) for images in panels.values()), default=0)
    rows = max(1, -(-count // columns))
    row_height = tile + _LABEL_HEIGHT
    panel_width = columns * tile + (columns - 1) * _GAP
    width = len(panels) * panel_width + (len(panels) - 1) * 3 * _GAP
    height = _LABEL_HEIGHT + rows * row_height
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for p, (title, images) in enumerate(panels.items()):
        x0 = p * (panel_width + 3 * _GAP)
        draw.text((x0, 1), f"{title} ({len(images)})", fill="black")
        for i, image in enumerate(images):
            r, c = divmod(i, columns)
            y = _LABEL_HEIGHT + r * row_height
            if c == 0 and row_labels and r < len(row_labels):
                draw.text((x0, y + 1), row_labels[r][:48], fill="gray")
            resized = image.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(resized, (x0 + c * (tile + _GAP), y + _LABEL_HEIGHT))
    return sheet


def first_tile(sheet: Image.Image, tile: int = TILE) -> Image.Image:
    """The first image of a sheet's first panel (a cover picture for a release)."""
    top = 2 * _LABEL_HEIGHT  # the panel title, then the first row's label
    return sheet.crop((0, top, tile, top + tile))
