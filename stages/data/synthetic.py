"""Procedural creatures for all 18 Pokémon types: the offline stand-in for real Pokémon data.

Each type has its own palette and shape cue (a fin for Water, a flame for Fire, a leaf for
Grass, ...); each individual varies in body shape, size, pose, eyes and accessories. Everything
is drawn with PIL from a numpy Generator, so the same seed gives the same pixels.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from stages.data.pokemon import TYPES

RGB = tuple[int, int, int]

# Body colour, accent colour (the cue), belly colour.
PALETTES: dict[str, tuple[RGB, RGB, RGB]] = {
    "Normal": ((214, 196, 160), (150, 110, 80), (245, 235, 215)),
    "Fire": ((236, 96, 38), (255, 205, 40), (255, 210, 150)),
    "Water": ((58, 128, 222), (28, 70, 170), (175, 215, 250)),
    "Grass": ((92, 178, 82), (35, 120, 45), (200, 235, 170)),
    "Electric": ((250, 212, 45), (40, 40, 40), (255, 240, 150)),
    "Ice": ((165, 222, 240), (235, 250, 255), (215, 245, 255)),
    "Fighting": ((186, 82, 58), (245, 245, 245), (230, 170, 140)),
    "Poison": ((150, 80, 185), (210, 150, 235), (200, 160, 220)),
    "Ground": ((200, 158, 88), (130, 92, 50), (230, 205, 150)),
    "Flying": ((228, 230, 242), (120, 160, 225), (250, 250, 255)),
    "Psychic": ((238, 118, 168), (180, 40, 110), (250, 200, 220)),
    "Bug": ((160, 196, 58), (60, 70, 30), (215, 230, 140)),
    "Rock": ((150, 138, 118), (95, 85, 72), (185, 175, 155)),
    "Ghost": ((108, 80, 158), (60, 40, 100), (160, 130, 200)),
    "Dragon": ((88, 92, 200), (200, 66, 56), (200, 190, 150)),
    "Dark": ((62, 60, 72), (230, 200, 60), (110, 105, 120)),
    "Steel": ((168, 174, 190), (110, 115, 130), (215, 220, 230)),
    "Fairy": ((250, 182, 212), (255, 255, 255), (255, 225, 240)),
}

# Share of each primary type among the ~1,000 real Pokémon, so the synthetic set is as
# unbalanced as the real one (Water most common, Flying rare).
TYPE_WEIGHTS: dict[str, int] = {
    "Water": 134, "Normal": 118, "Grass": 103, "Bug": 83, "Psychic": 77, "Fire": 72,
    "Electric": 60, "Rock": 58, "Dark": 49, "Fighting": 45, "Poison": 42, "Ground": 41,
    "Ghost": 40, "Dragon": 40, "Steel": 39, "Ice": 36, "Fairy": 27, "Flying": 10,
}  # fmt: skip

_PREFIXES: dict[str, tuple[str, ...]] = {
    "Normal": ("Pid", "Rat", "Snor", "Mee", "Tau", "Lick"),
    "Fire": ("Char", "Pyro", "Blaz", "Emb", "Vulp", "Flar"),
    "Water": ("Aqua", "Squir", "Mari", "Tid", "Lap", "Psy"),
    "Grass": ("Bulb", "Odd", "Leaf", "Chik", "Bell", "Tang"),
    "Electric": ("Pika", "Volt", "Zap", "Elek", "Jolt", "Mag"),
    "Ice": ("Frost", "Glac", "Snor", "Cryo", "Swin", "Del"),
    "Fighting": ("Mach", "Hit", "Prim", "Tyro", "Luc", "Brawl"),
    "Poison": ("Ekan", "Grim", "Kof", "Zub", "Toxi", "Nido"),
    "Ground": ("Sand", "Dig", "Cubo", "Phan", "Gol", "Tru"),
    "Flying": ("Pidg", "Torn", "Nois", "Swab", "Aer", "Zep"),
    "Psychic": ("Abr", "Drow", "Ral", "Esp", "Natu", "Mew"),
    "Bug": ("Cater", "Weed", "Pari", "Scy", "Ledy", "Spin"),
    "Rock": ("Geo", "Onix", "Rhy", "Lun", "Bold", "Roggen"),
    "Ghost": ("Gast", "Mis", "Shupp", "Dusk", "Phant", "Drif"),
    "Dragon": ("Drat", "Bag", "Gib", "Axew", "Drak", "Jang"),
    "Dark": ("Umbr", "Murk", "Sne", "Pooch", "Zor", "Abso"),
    "Steel": ("Magn", "Aron", "Bron", "Klink", "Ferr", "Cop"),
    "Fairy": ("Clef", "Togep", "Flab", "Spritz", "Swirl", "Sylv"),
}
_SUFFIXES = ("mon", "chu", "zard", "dle", "pod", "bun", "fin", "lix", "ton", "ly", "eon", "ra")


def scaled(colour: RGB, rng: np.random.Generator, spread: float = 0.06) -> RGB:
    """The colour with a little hue, saturation and value jitter, so no two look identical."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in colour))
    h = (h + rng.normal(0, spread / 3)) % 1.0
    s = float(np.clip(s * rng.uniform(1 - spread, 1 + spread), 0, 1))
    v = float(np.clip(v * rng.uniform(1 - spread, 1 + spread), 0, 1))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def darker(colour: RGB, factor: float = 0.6) -> RGB:
    return (round(colour[0] * factor), round(colour[1] * factor), round(colour[2] * factor))


@dataclass
class Body:
    """Where the creature's body lies on the canvas, for the cues to attach to."""

    cx: float
    cy: float
    rx: float
    ry: float

    @property
    def top(self) -> float:
        return self.cy - self.ry

    @property
    def bottom(self) -> float:
        return self.cy + self.ry

    def box(self) -> tuple[float, float, float, float]:
        return (self.cx - self.rx, self.cy - self.ry, self.cx + self.rx, self.cy + self.ry)

    def at(self, angle_deg: float, scale: float = 1.0) -> tuple[float, float]:
        """A point on the body's outline (angle 0 = right, 90 = down), optionally scaled."""
        a = math.radians(angle_deg)
        return (self.cx + self.rx * scale * math.cos(a), self.cy + self.ry * scale * math.sin(a))


Cue = Callable[[ImageDraw.ImageDraw, Body, RGB, RGB, np.random.Generator], None]


def _flame(draw: ImageDraw.ImageDraw, x: float, y: float, h: float, outer: RGB, inner: RGB):
    w = h * 0.45
    draw.polygon(
        [
            (x - w, y),
            (x - w * 0.7, y - h * 0.5),
            (x - w * 0.2, y - h * 0.35),
            (x, y - h),
            (x + w * 0.3, y - h * 0.45),
            (x + w * 0.75, y - h * 0.6),
            (x + w, y),
        ],
        fill=outer,
    )
    draw.ellipse((x - w * 0.5, y - h * 0.45, x + w * 0.5, y + w * 0.2), fill=inner)


def cue_fire(draw, body, accent, colour, rng):
    x, y = body.at(rng.uniform(-30, -10), 1.0)
    draw.line((body.at(0, 0.6), (x + body.rx * 0.35, y)), fill=colour, width=int(body.rx * 0.18))
    _flame(draw, x + body.rx * 0.35, y + body.rx * 0.1, body.ry * 0.9, (255, 110, 20), accent)
    if rng.random() < 0.6:
        _flame(draw, body.cx, body.top + body.ry * 0.15, body.ry * 0.7, (250, 70, 20), accent)


def cue_water(draw, body, accent, colour, rng):
    # dorsal fin on the back and a forked tail fin
    x0 = body.cx - body.rx * rng.uniform(0.1, 0.4)
    draw.polygon(
        [
            (x0 - body.rx * 0.35, body.top + body.ry * 0.25),
            (x0 + body.rx * 0.1, body.top - body.ry * 0.7),
            (x0 + body.rx * 0.45, body.top + body.ry * 0.2),
        ],
        fill=accent,
    )
    tx, ty = body.at(180, 0.9)
    s = body.ry * 0.6
    draw.polygon(
        [(tx, ty), (tx - s, ty - s * 0.9), (tx - s * 0.6, ty), (tx - s, ty + s * 0.9)], fill=accent
    )
    for _ in range(int(rng.integers(2, 5))):  # bubbles
        bx = body.cx + body.rx * rng.uniform(0.9, 1.5)
        by = body.cy - body.ry * rng.uniform(0.3, 1.4)
        r = body.rx * rng.uniform(0.06, 0.13)
        draw.ellipse(
            (bx - r, by - r, bx + r, by + r), outline=(120, 190, 250), width=max(2, int(r / 3))
        )


def _leaf(draw, x, y, length, angle, fill, vein):
    a = math.radians(angle)
    ux, uy = math.cos(a), math.sin(a)
    px, py = -uy, ux
    tip = (x + ux * length, y + uy * length)
    w = length * 0.35
    pts = [(x, y)]
    for t in np.linspace(0.1, 0.9, 6):
        bulge = math.sin(math.pi * t) * w
        pts.append((x + ux * length * t + px * bulge, y + uy * length * t + py * bulge))
    pts.append(tip)
    for t in np.linspace(0.9, 0.1, 6):
        bulge = math.sin(math.pi * t) * w
        pts.append((x + ux * length * t - px * bulge, y + uy * length * t - py * bulge))
    draw.polygon(pts, fill=fill)
    draw.line(((x, y), tip), fill=vein, width=max(2, int(length / 14)))


def cue_grass(draw, body, accent, colour, rng):
    x, y = body.cx + body.rx * rng.uniform(-0.2, 0.2), body.top + body.ry * 0.1
    _leaf(
        draw,
        x,
        y,
        body.ry * rng.uniform(0.9, 1.3),
        -90 + rng.uniform(-35, 35),
        accent,
        darker(accent),
    )
    if rng.random() < 0.5:
        _leaf(
            draw, x, y, body.ry * 0.7, -90 + rng.choice([-60, 60]), (60, 160, 60), darker(accent)
        )


def _bolt(draw, x, y, h, fill, outline):
    w = h * 0.35
    pts = [
        (x, y),
        (x + w, y - h * 0.35),
        (x + w * 0.35, y - h * 0.4),
        (x + w * 1.1, y - h),
        (x - w * 0.3, y - h * 0.5),
        (x + w * 0.2, y - h * 0.45),
        (x - w * 0.4, y),
    ]
    draw.polygon(pts, fill=fill, outline=outline, width=max(2, int(h / 25)))


def cue_electric(draw, body, accent, colour, rng):
    tx, ty = body.at(rng.uniform(-20, 10), 0.9)
    _bolt(draw, tx + body.rx * 0.2, ty + body.ry * 0.3, body.ry * 1.5, (255, 225, 60), accent)
    for side in (-1, 1):  # red cheeks and black-tipped pointed ears
        cx, cy = body.cx + side * body.rx * 0.55, body.cy + body.ry * 0.15
        r = body.rx * 0.13
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(230, 50, 40))
        ex = body.cx + side * body.rx * 0.45
        tip = (ex + side * body.rx * 0.3, body.top - body.ry * 0.75)
        draw.polygon(
            [
                (ex - body.rx * 0.18, body.top + body.ry * 0.2),
                tip,
                (ex + body.rx * 0.18, body.top + body.ry * 0.2),
            ],
            fill=colour,
        )
        draw.polygon(
            [
                tip,
                (tip[0] - side * body.rx * 0.12, tip[1] + body.ry * 0.3),
                (tip[0] - side * body.rx * -0.05, tip[1] + body.ry * 0.3),
            ],
            fill=accent,
        )


def cue_ice(draw, body, accent, colour, rng):
    n = int(rng.integers(3, 6))
    for i in range(n):
        angle = -160 + 140 * (i + 0.5) / n
        bx, by = body.at(angle, 0.85)
        a = math.radians(angle)
        length = body.ry * rng.uniform(0.45, 0.75)
        tip = (bx + math.cos(a) * length, by + math.sin(a) * length)
        px, py = -math.sin(a) * body.rx * 0.12, math.cos(a) * body.rx * 0.12
        draw.polygon(
            [(bx + px, by + py), tip, (bx - px, by - py)],
            fill=accent,
            outline=(120, 190, 230),
            width=2,
        )


def cue_fighting(draw, body, accent, colour, rng):
    y = body.cy + body.ry * 0.72  # a belt
    draw.rectangle(
        (body.cx - body.rx * 0.95, y - body.ry * 0.1, body.cx + body.rx * 0.95, y + body.ry * 0.1),
        fill=(40, 40, 40),
    )
    for side in (-1, 1):  # big fists with white wraps
        fx, fy = body.cx + side * body.rx * 1.15, body.cy + body.ry * rng.uniform(-0.3, 0.2)
        r = body.rx * 0.3
        draw.ellipse(
            (fx - r, fy - r, fx + r, fy + r), fill=accent, outline=darker(colour), width=3
        )
    for side in (-1, 1):  # angry brows
        bx = body.cx + side * body.rx * 0.3
        by = body.cy - body.ry * 0.45
        draw.line(
            (
                bx - side * body.rx * 0.2,
                by - body.ry * 0.12,
                bx + side * body.rx * 0.15,
                by + body.ry * 0.05,
            ),
            fill=(30, 20, 20),
            width=max(3, int(body.rx / 10)),
        )


def cue_poison(draw, body, accent, colour, rng):
    for _ in range(int(rng.integers(4, 8))):
        x, y = body.at(rng.uniform(0, 360), rng.uniform(0.2, 0.75))
        r = body.rx * rng.uniform(0.08, 0.16)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=accent)
    for _ in range(int(rng.integers(2, 4))):  # drips under the body
        x = body.cx + body.rx * rng.uniform(-0.7, 0.7)
        y = body.bottom - body.ry * 0.1
        r = body.rx * 0.1
        draw.polygon([(x - r, y), (x, y + r * 3.5), (x + r, y)], fill=(120, 200, 60))
        draw.ellipse((x - r, y + r * 2.5, x + r, y + r * 4.5), fill=(120, 200, 60))


def cue_ground(draw, body, accent, colour, rng):
    hx, hy = body.at(-60, 0.9)  # a nose horn
    draw.polygon(
        [
            (hx - body.rx * 0.15, hy + body.ry * 0.1),
            (hx + body.rx * 0.25, hy - body.ry * 0.6),
            (hx + body.rx * 0.2, hy + body.ry * 0.15),
        ],
        fill=(235, 225, 200),
    )
    for i in range(int(rng.integers(3, 6))):  # ridges on the back
        x, y = body.at(-170 + i * 22, 0.95)
        s = body.rx * 0.16
        draw.polygon([(x - s, y + s * 0.3), (x, y - s * 1.2), (x + s, y + s * 0.3)], fill=accent)
    for _ in range(3):  # dirt clods at the feet
        x = body.cx + body.rx * rng.uniform(-1.2, 1.2)
        y = body.bottom + body.ry * 0.15
        r = body.rx * rng.uniform(0.06, 0.12)
        draw.ellipse((x - r, y - r * 0.6, x + r, y + r * 0.6), fill=accent)


def _wing(draw, x, y, span, side, fill, edge):
    pts = [(x, y)]
    for i in range(4):
        t = (i + 1) / 4
        pts.append(
            (x + side * span * t, y - span * (0.7 - 0.35 * t) + (span * 0.25 if i % 2 else 0))
        )
    pts.append((x + side * span * 0.4, y + span * 0.35))
    draw.polygon(pts, fill=fill, outline=edge, width=3)


def cue_flying(draw, body, accent, colour, rng):
    for side in (-1, 1):
        _wing(
            draw,
            body.cx + side * body.rx * 0.6,
            body.cy - body.ry * 0.1,
            body.rx * rng.uniform(1.0, 1.3),
            side,
            accent,
            darker(accent),
        )
    bx, by = body.at(rng.choice([-15, 15]) - 0, 0.95)  # a beak
    s = body.rx * 0.25
    draw.polygon(
        [(bx - s * 0.3, by - s * 0.5), (bx + s, by), (bx - s * 0.3, by + s * 0.5)],
        fill=(245, 165, 40),
    )


def cue_psychic(draw, body, accent, colour, rng):
    for k in range(2):  # aura rings behind the head
        r = body.rx * (1.35 + 0.25 * k)
        draw.arc(
            (body.cx - r, body.cy - r, body.cx + r, body.cy + r),
            200,
            340,
            fill=(200, 120, 240),
            width=max(3, int(body.rx / 12)),
        )
    gx, gy = body.cx, body.cy - body.ry * 0.6  # a gem on the forehead
    r = body.rx * 0.16
    draw.polygon(
        [(gx, gy - r * 1.3), (gx + r, gy), (gx, gy + r * 1.3), (gx - r, gy)],
        fill=accent,
        outline=(255, 240, 250),
        width=2,
    )


def cue_bug(draw, body, accent, colour, rng):
    for side in (-1, 1):  # antennae with knobs
        x0 = body.cx + side * body.rx * 0.25
        x1 = x0 + side * body.rx * rng.uniform(0.2, 0.5)
        y1 = body.top - body.ry * rng.uniform(0.6, 0.9)
        draw.line(
            (x0, body.top + body.ry * 0.15, x1, y1), fill=accent, width=max(3, int(body.rx / 12))
        )
        r = body.rx * 0.09
        draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=accent)
    for i in range(3):  # segment stripes
        y = body.cy + body.ry * (0.05 + 0.25 * i)
        half = body.rx * math.sqrt(max(0.0, 1 - ((y - body.cy) / body.ry) ** 2)) * 0.95
        draw.line(
            (body.cx - half, y, body.cx + half, y), fill=accent, width=max(3, int(body.ry / 12))
        )


def cue_rock(draw, body, accent, colour, rng):
    for _ in range(int(rng.integers(3, 6))):  # boulders stuck to the body
        x, y = body.at(rng.uniform(-180, 0), rng.uniform(0.85, 1.05))
        r = body.rx * rng.uniform(0.15, 0.28)
        n = 6
        pts = [
            (
                x + r * rng.uniform(0.7, 1.1) * math.cos(2 * math.pi * k / n),
                y + r * rng.uniform(0.7, 1.1) * math.sin(2 * math.pi * k / n),
            )
            for k in range(n)
        ]
        draw.polygon(pts, fill=colour, outline=accent, width=3)
    for _ in range(2):  # cracks
        x, y = body.at(rng.uniform(0, 360), 0.6)
        pts = [(x, y)]
        for _ in range(3):
            x += body.rx * rng.uniform(-0.2, 0.2)
            y += body.ry * rng.uniform(0.05, 0.2)
            pts.append((x, y))
        draw.line(pts, fill=accent, width=3)


def cue_ghost(draw, body, accent, colour, rng):
    # a wavy sheet instead of feet, and a dark mouth
    n = 5
    y = body.cy + body.ry * 0.5
    for k in range(n):
        x0 = body.cx - body.rx + 2 * body.rx * k / n
        x1 = x0 + 2 * body.rx / n
        draw.pieslice((x0, y - body.ry * 0.3, x1, y + body.ry * 0.55), 0, 180, fill=colour)
    mx, my = body.cx, body.cy + body.ry * 0.25
    draw.ellipse(
        (mx - body.rx * 0.3, my - body.ry * 0.1, mx + body.rx * 0.3, my + body.ry * 0.18),
        fill=accent,
    )


def cue_dragon(draw, body, accent, colour, rng):
    for side in (-1, 1):  # horns
        hx = body.cx + side * body.rx * 0.35
        draw.polygon(
            [
                (hx - body.rx * 0.1, body.top + body.ry * 0.2),
                (hx + side * body.rx * 0.3, body.top - body.ry * 0.7),
                (hx + body.rx * 0.1, body.top + body.ry * 0.2),
            ],
            fill=(240, 225, 180),
        )
    for side in (-1, 1):  # bat wings
        wx, wy = body.cx + side * body.rx * 0.7, body.cy - body.ry * 0.2
        span = body.rx * 1.1
        draw.polygon(
            [
                (wx, wy),
                (wx + side * span, wy - span * 0.8),
                (wx + side * span * 0.8, wy),
                (wx + side * span * 0.5, wy - span * 0.1),
                (wx + side * span * 0.3, wy + span * 0.3),
            ],
            fill=accent,
        )
    for i in range(4):  # back spikes
        x, y = body.at(-150 + i * 18, 1.0)
        s = body.rx * 0.12
        draw.polygon([(x - s, y + s), (x, y - s * 1.2), (x + s, y + s)], fill=accent)


def cue_dark(draw, body, accent, colour, rng):
    mx, my, r = body.cx, body.cy - body.ry * 0.55, body.rx * 0.2  # a crescent moon
    draw.ellipse((mx - r, my - r, mx + r, my + r), fill=accent)
    draw.ellipse((mx - r * 0.4, my - r * 1.1, mx + r * 1.4, my + r * 0.6), fill=colour)
    for side in (-1, 1):  # sharp ears
        ex = body.cx + side * body.rx * 0.55
        draw.polygon(
            [
                (ex - body.rx * 0.2, body.top + body.ry * 0.3),
                (ex + side * body.rx * 0.15, body.top - body.ry * 0.55),
                (ex + body.rx * 0.2, body.top + body.ry * 0.3),
            ],
            fill=colour,
        )
    y = body.cy - body.ry * 0.15  # a mask band across the eyes
    draw.rectangle(
        (
            body.cx - body.rx * 0.85,
            y - body.ry * 0.15,
            body.cx + body.rx * 0.85,
            y + body.ry * 0.15,
        ),
        fill=(25, 25, 35),
    )


def cue_steel(draw, body, accent, colour, rng):
    for k in range(-1, 2):  # plate seams
        x = body.cx + k * body.rx * 0.5
        draw.line((x, body.cy - body.ry * 0.7, x, body.cy + body.ry * 0.7), fill=accent, width=3)
    for _ in range(int(rng.integers(4, 8))):  # rivets
        x, y = body.at(rng.uniform(0, 360), rng.uniform(0.5, 0.8))
        r = body.rx * 0.06
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(225, 228, 235), outline=accent, width=2)
    x0, y0 = body.at(-130, 0.6)  # a metallic shine
    draw.arc(
        (x0 - body.rx * 0.3, y0 - body.ry * 0.3, x0 + body.rx * 0.3, y0 + body.ry * 0.3),
        180,
        270,
        fill=(250, 250, 255),
        width=max(3, int(body.rx / 10)),
    )


def _sparkle(draw, x, y, r, fill):
    draw.polygon(
        [
            (x, y - r),
            (x + r * 0.25, y - r * 0.25),
            (x + r, y),
            (x + r * 0.25, y + r * 0.25),
            (x, y + r),
            (x - r * 0.25, y + r * 0.25),
            (x - r, y),
            (x - r * 0.25, y - r * 0.25),
        ],
        fill=fill,
    )


def cue_fairy(draw, body, accent, colour, rng):
    bx, by = body.cx + body.rx * rng.uniform(-0.4, 0.4), body.top + body.ry * 0.05  # a bow
    s = body.rx * 0.3
    draw.polygon([(bx, by), (bx - s, by - s * 0.6), (bx - s, by + s * 0.6)], fill=(255, 110, 170))
    draw.polygon([(bx, by), (bx + s, by - s * 0.6), (bx + s, by + s * 0.6)], fill=(255, 110, 170))
    draw.ellipse((bx - s * 0.25, by - s * 0.25, bx + s * 0.25, by + s * 0.25), fill=(255, 70, 140))
    for _ in range(int(rng.integers(3, 6))):  # sparkles around
        x, y = body.at(rng.uniform(0, 360), rng.uniform(1.25, 1.6))
        _sparkle(draw, x, y, body.rx * rng.uniform(0.1, 0.2), (255, 230, 120))


def cue_normal(draw, body, accent, colour, rng):
    for side in (-1, 1):  # round ears
        ex, ey = body.cx + side * body.rx * 0.55, body.top + body.ry * 0.1
        r = body.rx * rng.uniform(0.22, 0.32)
        draw.ellipse((ex - r, ey - r, ex + r, ey + r), fill=colour, outline=accent, width=3)
    if rng.random() < 0.6:  # a patch
        x, y = body.at(rng.uniform(0, 360), 0.5)
        r = body.rx * 0.25
        draw.ellipse((x - r, y - r * 0.8, x + r, y + r * 0.8), fill=accent)
    tx, ty = body.at(170, 0.95)  # a curly tail
    r = body.rx * 0.25
    draw.arc(
        (tx - r * 2, ty - r, tx, ty + r), 0, 300, fill=accent, width=max(3, int(body.rx / 10))
    )


CUES: dict[str, Cue] = {
    "Normal": cue_normal, "Fire": cue_fire, "Water": cue_water, "Grass": cue_grass,
    "Electric": cue_electric, "Ice": cue_ice, "Fighting": cue_fighting, "Poison": cue_poison,
    "Ground": cue_ground, "Flying": cue_flying, "Psychic": cue_psychic, "Bug": cue_bug,
    "Rock": cue_rock, "Ghost": cue_ghost, "Dragon": cue_dragon, "Dark": cue_dark,
    "Steel": cue_steel, "Fairy": cue_fairy,
}  # fmt: skip
# Cues drawn behind the body (wings, auras, fins); the rest go on top of it.
_BEHIND = {"Flying", "Dragon", "Psychic", "Water", "Fire", "Electric", "Ice", "Ground"}


def _body_outline(body: Body, shape: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Outline points of the body: an ellipse, a pear, a blob or a squarish bean."""
    n = 48
    wobble = rng.uniform(0, 2 * math.pi, size=3)
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = math.cos(t), math.sin(t)
        if shape == "pear":
            x *= 1 + 0.25 * y
        elif shape == "blob":
            r = 1 + 0.08 * math.sin(3 * t + wobble[0]) + 0.05 * math.sin(5 * t + wobble[1])
            x, y = x * r, y * r
        elif shape == "bean":
            p = 2.8
            x = math.copysign(abs(math.cos(t)) ** (2 / p), math.cos(t))
            y = math.copysign(abs(math.sin(t)) ** (2 / p), math.sin(t))
        pts.append((body.cx + body.rx * x, body.cy + body.ry * y))
    return pts


def _eyes(draw: ImageDraw.ImageDraw, body: Body, type1: str, rng: np.random.Generator) -> None:
    spacing = body.rx * rng.uniform(0.28, 0.45)
    y = body.cy - body.ry * rng.uniform(0.05, 0.3)
    r = body.rx * rng.uniform(0.1, 0.18)
    iris = (220, 30, 30) if type1 == "Dark" else tuple(int(c) for c in rng.integers(0, 90, 3))
    look = rng.uniform(-0.3, 0.3) * r
    for side in (-1, 1):
        x = body.cx + side * spacing
        draw.ellipse(
            (x - r, y - r * 1.2, x + r, y + r * 1.2),
            fill=(255, 255, 255),
            outline=(30, 30, 30),
            width=2,
        )
        p = r * 0.6
        draw.ellipse((x - p + look, y - p, x + p + look, y + p + p * 0.4), fill=iris)
        g = p * 0.35
        draw.ellipse(
            (x - p * 0.3 + look - g, y - p * 0.5 - g, x - p * 0.3 + look + g, y - p * 0.5 + g),
            fill=(255, 255, 255),
        )
    mouth_y = y + body.ry * rng.uniform(0.3, 0.45)
    w = body.rx * rng.uniform(0.12, 0.25)
    if rng.random() < 0.7:
        draw.arc(
            (body.cx - w, mouth_y - w * 0.6, body.cx + w, mouth_y + w * 0.6),
            20,
            160,
            fill=(40, 25, 25),
            width=max(2, int(body.rx / 14)),
        )
    else:
        draw.ellipse(
            (body.cx - w * 0.5, mouth_y - w * 0.3, body.cx + w * 0.5, mouth_y + w * 0.5),
            fill=(120, 30, 40),
        )


def draw_creature(
    type1: str, rng: np.random.Generator, size: int = 128, type2: str | None = None
) -> Image.Image:
    """One creature of `type1` (with a touch of `type2`) on a transparent RGBA canvas."""
    if type1 not in CUES:
        raise ValueError(f"unknown type {type1!r}; expected one of {', '.join(TYPES)}")
    scale = 2  # draw at twice the size, then downsample: cheap anti-aliasing
    side = size * scale
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    body_c, accent_c, belly_c = PALETTES[type1]
    colour, accent = scaled(body_c, rng), scaled(accent_c, rng, 0.04)
    belly = scaled(PALETTES[type2][0] if type2 and rng.random() < 0.7 else belly_c, rng, 0.04)
    s = side * rng.uniform(0.75, 1.0)
    body = Body(
        cx=side / 2 + rng.uniform(-0.06, 0.06) * side,
        cy=side * 0.55 + rng.uniform(-0.05, 0.05) * side,
        rx=s * rng.uniform(0.2, 0.3),
        ry=s * rng.uniform(0.2, 0.28),
    )
    shape = str(rng.choice(["ellipse", "pear", "blob", "bean"]))
    cue = CUES[type1]
    if type1 in _BEHIND:
        cue(draw, body, accent, colour, rng)
    if type1 != "Ghost":  # feet
        for foot in (-1, 1):
            fx = body.cx + foot * body.rx * rng.uniform(0.35, 0.6)
            fr = body.rx * rng.uniform(0.18, 0.26)
            draw.ellipse(
                (fx - fr, body.bottom - fr * 0.8, fx + fr, body.bottom + fr * 0.7),
                fill=darker(colour, 0.85),
            )
    draw.polygon(
        _body_outline(body, shape, rng), fill=colour, outline=darker(colour, 0.55), width=4
    )
    bw, bh = body.rx * rng.uniform(0.45, 0.65), body.ry * rng.uniform(0.35, 0.55)
    by = body.cy + body.ry * 0.35
    draw.ellipse((body.cx - bw, by - bh, body.cx + bw, by + bh * 0.9), fill=belly)
    if type1 not in _BEHIND:
        cue(draw, body, accent, colour, rng)
    _eyes(draw, body, type1, rng)
    if type2 and type2 != type1 and rng.random() < 0.5:  # a small mark of the second type
        mx, my = body.at(rng.uniform(20, 70), 0.55)
        r = body.rx * 0.14
        draw.ellipse((mx - r, my - r, mx + r, my + r), fill=PALETTES[type2][1])
    if type1 == "Ghost":  # ghosts are a little see-through
        canvas.putalpha(canvas.getchannel("A").point(lambda a: min(a, 215)))
    canvas = canvas.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BICUBIC)
    if rng.random() < 0.5:  # facing left or right
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def creature_rng(seed: int, pokemon_id: int) -> np.random.Generator:
    """The random stream of one creature: independent of how many others are drawn."""
    return np.random.default_rng([seed, pokemon_id])


def synthetic_stats(count: int, seed: int) -> pd.DataFrame:
    """A Pokédex of `count` creatures in the real stats CSV's shape.

    Columns: id, name, type1, type2, generation, hp, attack, defense, speed. Every type
    appears at least twice (once below 36 creatures); the rest follow the real frequencies.
    """
    rng = np.random.default_rng([seed, 0])
    weights = np.array([TYPE_WEIGHTS[t] for t in TYPES], dtype=float)
    if count < len(TYPES):
        raise ValueError(f"count must be at least {len(TYPES)}, one per type; got {count}")
    types = [t for t in TYPES for _ in range(2 if count >= 2 * len(TYPES) else 1)]
    types += list(rng.choice(TYPES, size=count - len(types), p=weights / weights.sum()))
    types = [str(t) for t in rng.permutation(types)]
    rows, taken = [], set()
    for i, type1 in enumerate(types, start=1):
        type2 = str(rng.choice([t for t in TYPES if t != type1])) if rng.random() < 0.4 else None
        base = str(rng.choice(_PREFIXES[type1])) + str(rng.choice(_SUFFIXES))
        name, n = base, 2
        while name in taken:
            name, n = f"{base} {_roman(n)}", n + 1
        taken.add(name)
        rows.append(
            {
                "id": i,
                "name": name,
                "type1": type1,
                "type2": type2,
                "generation": 1 + (i - 1) * 9 // count,
                "hp": int(rng.integers(20, 150)),
                "attack": int(rng.integers(20, 150)),
                "defense": int(rng.integers(20, 150)),
                "speed": int(rng.integers(20, 150)),
            }
        )
    return pd.DataFrame(rows)


def _roman(n: int) -> str:
    return {2: "II", 3: "III", 4: "IV", 5: "V"}.get(n, str(n))
