"""The one grid painter: images in rows and columns, with a header over each column and a label
left of each row (prompt matrices, X/Y/Z plots, validation grids, DreamBench grids, the demo)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                       # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _pieces(draw, word: str, font, width: int) -> list[str]:
    """``word``, or pieces of it that fit ``width`` where it alone does not (a label over a small cell)."""
    pieces, piece = [], ""
    for ch in word:
        if piece and draw.textlength(piece + ch, font=font) > width:
            pieces.append(piece)
            piece = ""
        piece += ch
    return pieces + [piece]


def _wrap(draw, text: str, font, width: int) -> list[str]:
    words, lines, line = [p for w in text.split() for p in _pieces(draw, w, font, width)], [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines or [""]


def annotated_grid(images: list, cols: int, col_labels=None, row_labels=None, pad: int = 0):
    """Images in a grid of ``cols`` columns, with a header above each column and a label left of
    each row. A label is a list of ``(text, active)`` lines; inactive ones are grey, struck through."""
    rows = (len(images) + cols - 1) // cols
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    font_size = max(12, (cell_w + cell_h) // 25)
    font = _font(font_size)
    line_h = int(font_size * 1.3)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def layout(labels, width):
        return [[(line, active) for text, active in label for line in _wrap(scratch, text, font, width)]
                for label in labels]

    top_lines = layout(col_labels, max(font_size, cell_w - font_size // 2)) if col_labels else None
    left_w = 0
    if row_labels:
        left_w = max(cell_w * 3 // 4, 2 * font_size)
        left_lines = layout(row_labels, left_w - font_size // 2)
        # a label taller than its row would run into the next (small cells): wider, up to one line each
        # or 16 characters' height (a long prompt beside 32 px rows would make the grid mostly label)
        widest = int(max((scratch.textlength(t, font=font) for label in row_labels for t, _ in label), default=0)) + font_size
        widest = min(widest, max(left_w, 16 * font_size))
        while max(map(len, left_lines), default=0) * line_h > cell_h + pad and left_w < widest:
            left_w = min(widest, left_w * 3 // 2)
            left_lines = layout(row_labels, left_w - font_size // 2)
        fits = max(1, (cell_h + pad) // line_h)          # still taller: its first lines, the last cut with "…"
        left_lines = [lines if len(lines) <= fits else lines[:fits - 1] + [(lines[fits - 1][0] + "…", lines[fits - 1][1])]
                      for lines in left_lines]
    top_h = (max(len(t) for t in top_lines) * line_h + font_size // 2) if top_lines else 0

    width = left_w + cols * cell_w + (cols - 1) * pad
    height = top_h + rows * cell_h + (rows - 1) * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        x = left_w + c * (cell_w + pad) + (cell_w - im.width) // 2
        y = top_h + r * (cell_h + pad) + (cell_h - im.height) // 2
        canvas.paste(im.convert("RGB"), (x, y))

    def draw_lines(lines, cx, top):
        for n, (line, active) in enumerate(lines):
            y = top + n * line_h
            fill = (0, 0, 0) if active else (153, 153, 153)
            draw.text((cx, y), line, font=font, fill=fill, anchor="ma")
            if not active:
                w = draw.textlength(line, font=font)
                mid = y + font_size // 2 + 1
                draw.line((cx - w / 2, mid, cx + w / 2, mid), fill=fill, width=max(1, font_size // 12))

    if top_lines:
        for c, lines in enumerate(top_lines[:cols]):
            cx = left_w + c * (cell_w + pad) + cell_w // 2
            draw_lines(lines, cx, (top_h - len(lines) * line_h) // 2)
    if row_labels:
        for r, lines in enumerate(left_lines[:rows]):
            cy = top_h + r * (cell_h + pad) + cell_h // 2
            draw_lines(lines, left_w // 2, cy - len(lines) * line_h // 2)
    return canvas


def batch_grid(images: list):
    """A batch's images in one picture, laid out as the WebUI lays out its grids by default:
    round(sqrt(n)) rows, filled row by row."""
    rows = max(1, round(len(images) ** 0.5))
    return annotated_grid(images, -(-len(images) // rows))
