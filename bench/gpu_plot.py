"""Draw images/s against batch size from a `bench.gpu` results file, as the PNG docs/benchmarks.md embeds.

Plain Pillow, so it needs nothing beyond the worker's own dependencies:

    python -m bench.gpu_plot gpu.json docs/img/gpu-images-per-s.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from bench._anchors import BOUND_IMAGES_PER_S, TARGET_IMAGES_PER_S

WIDTH, HEIGHT = 960, 600
LEFT, RIGHT, TOP, BOTTOM = 80, 250, 60, 70
Y_MAX = 12.0
COLOURS = ["#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e"]
Point = tuple[float, float]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def series(sweep: Sequence[dict[str, Any]]) -> dict[str, list[Point]]:
    """(batch, images/s) points per configuration, in the order the configurations ran."""
    lines: dict[str, list[Point]] = {}
    for row in sweep:
        lines.setdefault(row["config"], []).append((float(row["batch"]), float(row["images_per_s"])))
    return lines


def to_canvas(point: Point, *, x_max: float) -> Point:
    """Data coordinates to pixels inside the plot area."""
    x, y = point
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    return LEFT + x / x_max * plot_w, TOP + plot_h - y / Y_MAX * plot_h


def draw_axes(draw: ImageDraw.ImageDraw, font: Font, *, batches: Sequence[float], x_max: float) -> None:
    """Grid, ticks and axis titles."""
    for level in range(0, int(Y_MAX) + 1, 2):
        left, y = to_canvas((0, level), x_max=x_max)
        right, _ = to_canvas((x_max, level), x_max=x_max)
        draw.line([(left, y), (right, y)], fill="#e5e5e5")
        draw.text((left - 10, y), str(level), fill="black", font=font, anchor="rm")
    for batch in batches:
        x, bottom = to_canvas((batch, 0), x_max=x_max)
        draw.line([(x, bottom), (x, bottom + 5)], fill="black")
        draw.text((x, bottom + 8), f"{batch:g}", fill="black", font=font, anchor="mt")
    origin, corner = to_canvas((0, 0), x_max=x_max), to_canvas((x_max, Y_MAX), x_max=x_max)
    draw.line([origin, (corner[0], origin[1])], fill="black")
    draw.line([origin, (origin[0], corner[1])], fill="black")
    draw.text(
        ((origin[0] + corner[0]) / 2, HEIGHT - 25), "batch size (images per call)", fill="black", font=font, anchor="mm"
    )
    draw.text((20, TOP - 22), "images/s", fill="black", font=font)


def draw_levels(draw: ImageDraw.ImageDraw, font: Font, *, x_max: float) -> None:
    """Dashed lines for the 7 images/s target and the ~11 images/s bound."""
    for level, label in ((TARGET_IMAGES_PER_S, "target"), (BOUND_IMAGES_PER_S, "bound (60 % of 800 TFLOP/s)")):
        left, y = to_canvas((0, level), x_max=x_max)
        right, _ = to_canvas((x_max, level), x_max=x_max)
        for start in range(int(left), int(right), 12):
            draw.line([(start, y), (min(start + 6, right), y)], fill="#444444", width=1)
        draw.text((left + 8, y - 4), f"{level:g} img/s {label}", fill="#444444", font=font, anchor="ls")


def plot(results: dict[str, Any], out: Path) -> None:
    """Write the chart for `results` (a bench.gpu JSON document) to `out`."""
    lines = series(results["sweep"])
    batches = sorted({x for points in lines.values() for x, _ in points})
    x_max = max(batches)
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    machine = results["machine"]
    title = f"SD 1.5 (random weights), 512x512, 25 steps: {machine.get('gpu', 'CPU')}, torch {machine['torch']}"
    draw.text((LEFT, 12), title, fill="black", font=font)
    draw_axes(draw, font, batches=batches, x_max=x_max)
    draw_levels(draw, font, x_max=x_max)
    for index, (name, points) in enumerate(lines.items()):
        colour = COLOURS[index % len(COLOURS)]
        pixels = [to_canvas(point, x_max=x_max) for point in points]
        draw.line(pixels, fill=colour, width=3)
        for x, y in pixels:
            draw.ellipse([(x - 4, y - 4), (x + 4, y + 4)], fill=colour)
        legend_y = TOP + 20 + 24 * index
        draw.line([(WIDTH - RIGHT + 20, legend_y), (WIDTH - RIGHT + 50, legend_y)], fill=colour, width=3)
        draw.text((WIDTH - RIGHT + 58, legend_y), name, fill="black", font=font, anchor="lm")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)


def main(argv: list[str] | None = None) -> None:
    """Read the results file and write the chart."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    plot(json.loads(args.results.read_text()), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
