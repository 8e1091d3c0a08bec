"""A plan as one picture: the key-frames side by side, each captioned with its subgoal (for reports and issues)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def contact_sheet(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    title: str = "",
    tile: int = 256,
    pad: int = 8,
    caption_lines: int = 4,
) -> Image.Image:
    """Tiles of `tile` px (aspect kept), a caption of up to `caption_lines` wrapped lines under each, a title on top."""
    font = ImageFont.load_default()
    line_h = 14
    chars = max(8, tile // 7)
    n = max(1, len(images))
    title_h = line_h + pad if title else 0
    W = pad + n * (tile + pad)
    H = title_h + pad + tile + pad + caption_lines * line_h + pad
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    if title:
        d.text((pad, pad // 2), textwrap.shorten(title, width=max(8, W // 7)), fill=(0, 0, 0), font=font)
    for i, (im, cap) in enumerate(zip(images, captions)):
        x, y = pad + i * (tile + pad), title_h + pad
        thumb = im.convert("RGB")
        scale = tile / max(thumb.size)
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))), Image.NEAREST)
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        d.rectangle([x - 1, y - 1, x + tile, y + tile], outline=(180, 180, 180))
        text = f"{i + 1}. {cap.strip() or '(no text)'}"
        lines = textwrap.wrap(text, width=chars)[:caption_lines] or [""]
        for j, line in enumerate(lines):
            d.text((x, y + tile + pad // 2 + j * line_h), line, fill=(20, 20, 20), font=font)
    return sheet
