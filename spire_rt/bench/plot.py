"""The benchmark's bar chart, drawn with PIL (no plotting library needed): one panel per stage.

Each panel has one horizontal bar per backend, its length the median time (the panel's own scale, since stages
differ by orders of magnitude), a whisker from the 25th to the 75th percentile, and the label
`median ms  (speed-up over torch)`.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .runner import sampling_label

COLOURS = [(90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207)]
WIDTH = 1000
PANEL_TITLE = 22
BAR = 22
GAP = 8
MARGIN = 16
LABEL_WIDTH = 230


def font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def draw_chart(result: dict, path: str | Path) -> Path:
    stages = result["stages"]
    labels = list(result["backends"])
    panel_height = PANEL_TITLE + len(labels) * (BAR + GAP) + GAP
    header = 64
    height = header + len(stages) * (panel_height + MARGIN) + MARGIN
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    title_font, text_font, small_font = font(18), font(13), font(12)

    config, machine = result["config"], result["machine"]
    title = (f"spire-rt bench: {result['model']['name']} {config['size'][0]}x{config['size'][1]}, "
             f"{sampling_label(config)}, median of {config['repeats']}")
    draw.text((MARGIN, 10), title, fill="black", font=title_font)
    load = result.get("load", {})
    threads = config.get("threads") or "library default"
    subtitle = (f"{machine['cpu']}, {machine['usable_cores']} cores, threads: {threads}; other processes kept "
                f"{load.get('other_processes_cpu_cores', '?')} cores busy; bars: median, whisker: 25-75%")
    draw.text((MARGIN, 36), subtitle, fill=(80, 80, 80), font=small_font)

    top = header
    for stage, entry in stages.items():
        draw.text((MARGIN, top), f"{stage}  ({entry.get('what', '')})", fill="black", font=text_font)
        longest = max(stats["p75_s"] for stats in entry["backends"].values()) or 1.0
        scale = (WIDTH - LABEL_WIDTH - 2 * MARGIN - 290) / longest  # room for the label after the bar
        y = top + PANEL_TITLE
        for index, label in enumerate(labels):
            stats = entry["backends"][label]
            colour = COLOURS[index % len(COLOURS)]
            draw.text((MARGIN, y + 4), label[:34], fill=colour, font=small_font)
            x0 = MARGIN + LABEL_WIDTH
            x1 = x0 + max(1, round(stats["median_s"] * scale))
            draw.rectangle([x0, y, x1, y + BAR], fill=colour)
            w0, w1 = x0 + round(stats["p25_s"] * scale), x0 + round(stats["p75_s"] * scale)
            middle = y + BAR // 2
            draw.line([w0, middle, w1, middle], fill="black", width=2)
            for end in (w0, w1):
                draw.line([end, middle - 5, end, middle + 5], fill="black", width=2)
            text = f"{stats['median_s'] * 1e3:,.1f} ms  (x{stats['speedup_vs_torch']:.2f})"
            if "psnr_vs_torch_db" in stats and index:
                psnr = stats["psnr_vs_torch_db"]
                text += "  identical to torch" if psnr is None else f"  {psnr:.1f} dB vs torch"
            draw.text((max(x1, w1) + 8, y + 4), text, fill="black", font=small_font)
            y += BAR + GAP
        top += panel_height + MARGIN
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
