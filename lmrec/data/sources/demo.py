"""Procedurally drawn "landmark photo" dataset for offline, deterministic demos.

Real landmark data sets are large downloads with licence terms, which is a poor first
experience for a newcomer who only wants to see the training pipeline run end to end. This
module draws small synthetic "photos" of eight kinds of landmark structure (tower, arch, dome,
pyramid, bridge, lighthouse, pagoda, obelisk) with nothing but numpy and Pillow, so a classifier
can be trained with no network access at all.

The pictures are meant to be a real (if small) vision task rather than a trivial one: the
structure's position, scale, rotation, proportions and colour vary per image (colour is never a
class cue), and every scene has a random sky, horizon, hills, trees, clouds, distractor buildings,
lighting, noise and sometimes blur or a partial occlusion. Only the *shape* of the structure
identifies the class.

Everything is deterministic: an image depends only on ``(label, index, seed)`` and the requested
``image_size`` (which changes only the resolution, not the scene), so any single image can be
regenerated on its own, for example in a worker process. Identical arguments give byte-identical
JPEG output. The module deliberately does not import TensorFlow.
"""

from __future__ import annotations

import colorsys
import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lmrec.data.sources.base import Source, SourceItem
from lmrec.errors import UserError
from lmrec.settings import setting

if TYPE_CHECKING:  # annotations only: lmrec.config imports the sources
    from lmrec.config import PrepareConfig

__all__ = [
    "CLASS_NAMES",
    "JPEG_QUALITY",
    "MIN_IMAGE_SIZE",
    "DemoImage",
    "encode_jpeg",
    "generate",
    "make_image",
    "render",
    "source",
]

#: Class names, in label order (``label == CLASS_NAMES.index(class_name)``).
CLASS_NAMES: tuple[str, ...] = (
    "tower",
    "arch",
    "dome",
    "pyramid",
    "bridge",
    "lighthouse",
    "pagoda",
    "obelisk",
)

#: Fixed JPEG quality used by :func:`encode_jpeg` (fixed so output bytes are reproducible).
JPEG_QUALITY = 90

#: Smallest ``image_size`` accepted; below this the structures are no longer recognisable.
MIN_IMAGE_SIZE = 32

_SUPERSAMPLE = 2  # scenes are drawn at 2x and downsampled with LANCZOS for anti-aliasing

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class DemoImage:
    """One generated example.

    Attributes:
        image_id: Stable identifier, ``f"demo_{class_name}_{index:05d}"``.
        class_name: Entry of :data:`CLASS_NAMES` for ``label``.
        label: Integer class label in ``[0, num_classes)``.
        encoded: JPEG-encoded RGB image bytes.
    """

    image_id: str
    class_name: str
    label: int
    encoded: bytes


@dataclass(frozen=True)
class _Geom:
    """Placement and palette of the structure being drawn (supersampled pixel units)."""

    cx: float  # horizontal centre
    base: float  # y coordinate where the structure meets the ground
    h: float  # total height
    width: float  # overall width (class aspect * per-image jitter * h)
    unit: float  # one output pixel in canvas pixels, used for minimum line widths
    main: RGB
    dark: RGB
    light: RGB
    accent: RGB

    def y(self, t: float) -> float:
        """Canvas y coordinate at fraction ``t`` of the structure height above the base."""
        return self.base - t * self.h

    def lw(self, frac: float) -> int:
        """Line width that is ``frac`` of the height, but never thinner than one output pixel."""
        return max(int(round(self.unit)), int(round(frac * self.h)))


# --------------------------------------------------------------------------------------------
# Small drawing helpers


def _rect(d: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float, fill) -> None:
    d.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=fill)


def _ellipse(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    rx, ry = max(abs(rx), 0.5), max(abs(ry), 0.5)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _round_top_opening(
    d: ImageDraw.ImageDraw, cx: float, bottom: float, width: float, spring: float, fill
) -> None:
    """A rectangle from ``bottom`` up to ``spring`` topped by a semicircle (an arched opening)."""
    r = width / 2
    _rect(d, cx - r, spring, cx + r, bottom, fill)
    d.pieslice([cx - r, spring - r, cx + r, spring + r], 180, 360, fill=fill)


def _clamp8(value: float) -> int:
    return min(255, max(0, int(value)))


def _scale(color: RGB, factor: float) -> RGB:
    """Brightens (factor > 1) or darkens (factor < 1) a colour."""
    r, g, b = color
    return _clamp8(r * factor), _clamp8(g * factor), _clamp8(b * factor)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    """Linear blend from ``a`` (t=0) to ``b`` (t=1)."""
    return (
        round(a[0] * (1 - t) + b[0] * t),
        round(a[1] * (1 - t) + b[1] * t),
        round(a[2] * (1 - t) + b[2] * t),
    )


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(1.0, max(0.0, s)), min(1.0, max(0.0, v)))
    return int(r * 255), int(g * 255), int(b * 255)


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _jitter(rng: np.random.Generator, color: RGB, amount: float) -> RGB:
    """Adds independent uniform noise in ``[-amount, amount]`` to each channel."""
    r, g, b = (_clamp8(c + d) for c, d in zip(color, rng.uniform(-amount, amount, 3), strict=True))
    return r, g, b


# --------------------------------------------------------------------------------------------
# One drawing function per class. Each draws an opaque structure onto a transparent RGBA layer;
# pixels set to fully transparent (e.g. the opening of an arch) let the background show through.

_CLEAR = (0, 0, 0, 0)


def _draw_tower(d: ImageDraw.ImageDraw, rng: np.random.Generator, g: _Geom) -> None:
    """Eiffel-like tower: curved tapering lattice legs, platforms, crossbars and an antenna."""
    half = g.width / 2
    top_half = max(1.5 * g.unit, 0.04 * g.width)
    t_leg, t_mid, t_top = rng.uniform(0.15, 0.24), rng.uniform(0.38, 0.5), rng.uniform(0.8, 0.9)
    curve = rng.uniform(1.5, 2.5)

    def hw(t: float) -> float:
        return top_half + (half - top_half) * max(0.0, 1 - t / t_top) ** curve

    lw = g.lw(0.012)
    # Lower section: two solid legs joined by an arch under the first platform.
    leg = rng.uniform(0.22, 0.32) * half
    ts = np.linspace(0.0, t_leg, 6)
    for s in (-1, 1):
        outer = [(g.cx + s * hw(t), g.y(t)) for t in ts]
        inner = [(g.cx + s * (hw(t) - leg * (1 - 0.45 * t / t_leg)), g.y(t)) for t in ts[::-1]]
        d.polygon(outer + inner, fill=g.main)
    span = hw(t_leg) - leg * 0.55
    arch_h = rng.uniform(0.5, 0.8) * t_leg * g.h
    d.arc([g.cx - span, g.y(t_leg), g.cx + span, g.y(t_leg) + 2 * arch_h], 180, 360, g.dark, lw * 2)
    # Upper section: lattice of edges, crossbars and X braces.
    n_seg = int(rng.integers(5, 10))
    levels = np.linspace(t_leg, t_top, n_seg + 1)
    for s in (-1, 1):
        d.line([(g.cx + s * hw(t), g.y(t)) for t in levels], fill=g.main, width=lw * 2)
    for t0, t1 in zip(levels[:-1], levels[1:], strict=True):
        a, b = (g.cx - hw(t0), g.y(t0)), (g.cx + hw(t0), g.y(t0))
        c, e = (g.cx - hw(t1), g.y(t1)), (g.cx + hw(t1), g.y(t1))
        d.line([a, b], fill=g.main, width=lw)
        d.line([a, e], fill=g.dark, width=lw)
        d.line([b, c], fill=g.dark, width=lw)
    # Platforms, cabin and antenna.
    for t in (t_leg, t_mid):
        w = hw(t) * rng.uniform(1.05, 1.2)
        _rect(d, g.cx - w, g.y(t) - g.lw(0.022), g.cx + w, g.y(t), g.main)
    _rect(d, g.cx - top_half * 1.6, g.y(t_top + 0.04), g.cx + top_half * 1.6, g.y(t_top), g.main)
    d.line([(g.cx, g.y(t_top + 0.04)), (g.cx, g.y(1.0))], fill=g.main, width=lw)


def _draw_arch(d: ImageDraw.ImageDraw, rng: np.random.Generator, g: _Geom) -> None:
    """Triumphal arch: a massive block with a round-topped central opening and an attic."""
    half = g.width / 2
    t_body = rng.uniform(0.72, 0.85)
    _rect(d, g.cx - half, g.y(t_body), g.cx + half, g.base, g.main)
    attic = half * rng.uniform(0.8, 0.95)
    _rect(d, g.cx - attic, g.y(1.0), g.cx + attic, g.y(t_body), g.main)
    cornice = half * rng.uniform(1.02, 1.08)
    _rect(d, g.cx - cornice, g.y(t_body) - g.lw(0.03), g.cx + cornice, g.y(t_body), g.light)
    # Pilasters either side of the openings.
    pil_w = g.width * 0.035
    for x in (-0.82, -0.45, 0.45, 0.82):
        px = g.cx + x * half
        _rect(d, px - pil_w, g.y(t_body - 0.02), px + pil_w, g.y(0.05), g.dark)
    # Central opening, and sometimes smaller side openings; these are cut out (transparent).
    width = g.width * rng.uniform(0.3, 0.4)
    spring = g.y(rng.uniform(0.3, 0.45))
    spring = max(spring, g.y(t_body - 0.06) + width / 2)
    _round_top_opening(d, g.cx, g.base, width, spring, _CLEAR)
    if rng.random() < 0.6:
        side_w = g.width * rng.uniform(0.1, 0.14)
        side_spring = g.y(rng.uniform(0.2, 0.3))
        for s in (-1, 1):
            _round_top_opening(d, g.cx + s * half * 0.64, g.base, side_w, side_spring, _CLEAR)
    elif rng.random() < 0.7:  # relief panels instead of side openings
        for s in (-1, 1):
            x = g.cx + s * half * 0.64
            _rect(d, x - half * 0.12, g.y(0.6), x + half * 0.12, g.y(0.35), g.dark)


def _draw_dome(d: ImageDraw.ImageDraw, rng: np.random.Generator, g: _Geom) -> None:
    """Domed building: a colonnaded base, a drum, a hemispherical dome and a small lantern."""
    half = g.width / 2
    t_base, t_drum = rng.uniform(0.15, 0.3), rng.uniform(0.12, 0.2)
    t_drum += t_base
    t_dome = t_drum + rng.uniform(0.3, 0.42)
    _rect(d, g.cx - half, g.y(t_base), g.cx + half, g.base, g.main)
    n_col = int(rng.integers(4, 9))
    for x in np.linspace(-half * 0.85, half * 0.85, n_col):
        _rect(
            d, g.cx + x - g.lw(0.008), g.y(t_base - 0.03), g.cx + x + g.lw(0.008), g.y(0.02), g.dark
        )
    drum = half * rng.uniform(0.5, 0.7)
    _rect(d, g.cx - drum, g.y(t_drum), g.cx + drum, g.y(t_base), g.main)
    for x in np.linspace(-drum * 0.8, drum * 0.8, int(rng.integers(3, 7))):
        _rect(
            d,
            g.cx + x - g.lw(0.006),
            g.y(t_drum - 0.02),
            g.cx + x + g.lw(0.006),
            g.y(t_base + 0.02),
            g.dark,
        )
    dome_r = drum * rng.uniform(0.95, 1.08)
    dome_h = (t_dome - t_drum) * g.h
    d.pieslice(
        [g.cx - dome_r, g.y(t_drum) - dome_h, g.cx + dome_r, g.y(t_drum) + dome_h],
        180,
        360,
        fill=g.light,
    )
    # Two ribs on the dome: a narrower half-ellipse inside the dome's outline.
    ribs = [g.cx - dome_r / 2, g.y(t_drum) - dome_h, g.cx + dome_r / 2, g.y(t_drum) + dome_h]
    d.arc(ribs, 180, 360, fill=g.dark, width=g.lw(0.006))
    lantern = dome_r * rng.uniform(0.1, 0.18)
    t_lan = min(t_dome + 0.06, 0.97)
    _rect(d, g.cx - lantern, g.y(t_lan), g.cx + lantern, g.y(t_dome - 0.01), g.main)
    d.line([(g.cx, g.y(t_lan)), (g.cx, g.y(1.0))], fill=g.main, width=g.lw(0.012))


def _draw_pyramid(d: ImageDraw.ImageDraw, rng: np.random.Generator, g: _Geom) -> None:
    """Pyramid: a triangle split into a lit and a shaded face, often with visible steps."""
    half = g.width / 2
    apex = (g.cx + rng.uniform(-0.08, 0.08) * half, g.y(1.0))
    left, right = (g.cx - half, g.base), (g.cx + half, g.base)
    ridge = (g.cx + rng.uniform(-0.35, 0.35) * half, g.base)
    lit_left = rng.random() < 0.5
    d.polygon([left, apex, ridge], fill=g.light if lit_left else g.dark)
    d.polygon([ridge, apex, right], fill=g.dark if lit_left else g.light)
    if rng.random() < 0.7:  # stepped courses
        n = int(rng.integers(5, 13))
        step_col = _scale(g.main, 0.75)
        for t in np.linspace(0, 1, n + 1)[1:-1]:
            y = g.base + t * (apex[1] - g.base)
            x0 = left[0] + t * (apex[0] - left[0])
            x1 = right[0] + t * (apex[0] - right[0])
            d.line([(x0, y), (x1, y)], fill=step_col, width=g.lw(0.008))
    if rng.random() < 0.3:  # missing capstone: flatten the very top
        _rect(d, apex[0] - half * 0.08, apex[1], apex[0] + half * 0.08, g.y(0.94), _CLEAR)


def _draw_bridge(d: ImageDraw.ImageDraw, rng: np.random.Generator, g: _Geom) -> None:
    """Bridge over water: either a stone arch bridge or a suspension bridge with cables."""
    half = g.width / 2
    x0, x1 = g.cx - half, g.cx + half
    if rng.random() < 0.5:  # masonry arch bridge
        t_deck = rng.uniform(0.55, 0.8)
        _rect(d, x0, g.y(t_deck), x1, g.base, g.main)
        _rect(d, x0, g.y(t_deck) - g.lw(0.05), x1, g.y(t_deck), g.dark)  # parapet
        n = int(rng.integers(3, 6))
        pitch = g.width / n
        for i in range(n):
            w = pitch * rng.uniform(0.68, 0.8)
            _round_top_opening(
                d,
                x0 + (i + 0.5) * pitch,
                g.base,
                w,
                max(g.y(t_deck * 0.45), g.y(t_deck - 0.08) + w / 2),
                _CLEAR,
            )
        for x in np.linspace(x0 + pitch * 0.5, x1 - pitch * 0.5, n):  # lamp posts
            d.line([(x, g.y(t_deck)), (x, g.y(1.0))], fill=g.dark, width=g.lw(0.012))
        return
    # Suspension bridge.
    t_deck = rng.uniform(0.25, 0.4)
    deck_th = g.lw(0.05)
    _rect(d, x0, g.y(t_deck) - deck_th, x1, g.y(t_deck), g.main)
    tx = half * rng.uniform(0.45, 0.6)
    tw = g.width * 0.025
    lw = g.lw(0.008)
    for s in (-1, 1):  # cables on both sides of each tower, plus hangers
        xt = g.cx + s * tx
        xs = np.linspace(g.cx, xt, 14)
        sag = g.y(t_deck + 0.08)
        ys = sag + (g.y(0.97) - sag) * ((xs - g.cx) / (xt - g.cx)) ** 2
        d.line(list(zip(xs, ys, strict=True)), fill=g.dark, width=lw * 2)
        xe = g.cx + s * half
        d.line([(xt, g.y(0.97)), (xe, g.y(t_deck) - deck_th)], fill=g.dark, width=lw * 2)
        for xh, yh in zip(xs[1:-1:2], ys[1:-1:2], strict=True):
            d.line([(xh, yh), (xh, g.y(t_deck) - deck_th)], fill=g.dark, width=lw)
    for s in (-1, 1):  # portal towers with a crossbar, standing on piers
        xt = g.cx + s * tx
        for k in (-1, 1):
            _rect(
                d, xt + k * tw * 1.5 - tw / 2, g.y(1.0), xt + k * tw * 1.5 + tw / 2, g.base, g.main
            )
        _rect(d, xt - tw * 2, g.y(0.85), xt + tw * 2, g.y(0.82), g.main)
        _rect(d, xt - tw * 2, g.y(t_deck + 0.25), xt + tw * 2, g.y(t_deck + 0.22), g.main)
        _rect(d, xt - tw * 2.5, g.y(t_deck), xt + tw * 2.5, g.base, g.dark)


def _draw_lighthouse(d: ImageDraw.ImageDraw, rng: np.random.Generator, g: _Geom) -> None:
    """Lighthouse: a striped, tapered cylinder with a gallery, a glazed lamp room and a cap."""
    half = g.width / 2
    t_body = rng.uniform(0.7, 0.8)
    top = half * rng.uniform(0.55, 0.75)

    def hw(t: float) -> float:
        return half + (top - half) * t / t_body

    n = int(rng.integers(3, 8))
    edges = np.linspace(0, t_body, n + 1)
    for i, (t0, t1) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        color = g.main if i % 2 == 0 else g.accent
        d.polygon(
            [
                (g.cx - hw(t0), g.y(t0)),
                (g.cx + hw(t0), g.y(t0)),
                (g.cx + hw(t1), g.y(t1)),
                (g.cx - hw(t1), g.y(t1)),
            ],
            fill=color,
        )
    gallery = top * rng.uniform(1.25, 1.5)
    _rect(d, g.cx - gallery, g.y(t_body + 0.025), g.cx + gallery, g.y(t_body), g.dark)
    lamp = top * rng.uniform(0.65, 0.85)
    t_lamp = t_body + rng.uniform(0.1, 0.14)
    glow = _mix(g.light, (255, 236, 150), 0.75)
    _rect(d, g.cx - lamp, g.y(t_lamp), g.cx + lamp, g.y(t_body + 0.025), glow)
    for x in (-0.5, 0.0, 0.5):
        _rect(
            d,
            g.cx + x * lamp - g.unit * 0.5,
            g.y(t_lamp),
            g.cx + x * lamp + g.unit * 0.5,
            g.y(t_body + 0.025),
            g.dark,
        )
    cap_h = (0.96 - t_lamp) * g.h
    d.pieslice(
        [g.cx - lamp * 1.1, g.y(t_lamp) - cap_h, g.cx + lamp * 1.1, g.y(t_lamp) + cap_h],
        180,
        360,
        fill=g.dark,
    )
    d.line([(g.cx, g.y(0.95)), (g.cx, g.y(1.0))], fill=g.dark, width=g.lw(0.01))
    for t in np.linspace(0.15, t_body - 0.1, int(rng.integers(1, 4))):  # small windows
        _rect(d, g.cx - half * 0.1, g.y(t + 0.04), g.cx + half * 0.1, g.y(t), g.dark)


def _draw_pagoda(d: ImageDraw.ImageDraw, rng: np.random.Generator, g: _Geom) -> None:
    """Pagoda: stacked tiers that shrink upwards, each with a wide upturned roof, and a spire."""
    half = g.width / 2
    n = int(rng.integers(3, 7))
    t_spire = rng.uniform(0.82, 0.9)
    t_plinth = 0.04
    _rect(d, g.cx - half * 0.75, g.y(t_plinth), g.cx + half * 0.75, g.base, g.dark)
    tier_h = (t_spire - t_plinth) / n
    shrink = rng.uniform(0.35, 0.55)
    roof_frac = rng.uniform(0.35, 0.5)
    up = rng.uniform(0.25, 0.6)
    for i in range(n):
        t0 = t_plinth + i * tier_h
        t_roof = t0 + tier_h * (1 - roof_frac)
        body = half * 0.55 * (1 - shrink * i / n)
        _rect(d, g.cx - body, g.y(t_roof), g.cx + body, g.y(t0), g.main)
        _rect(d, g.cx - body * 0.25, g.y(t0 + tier_h * 0.35), g.cx + body * 0.25, g.y(t0), g.dark)
        roof = body * rng.uniform(1.55, 1.8)
        eave, ridge = g.y(t_roof), g.y(t0 + tier_h)
        tip = eave - up * (eave - ridge)
        d.polygon(
            [
                (g.cx - roof, tip),
                (g.cx - roof * 0.8, eave),
                (g.cx + roof * 0.8, eave),
                (g.cx + roof, tip),
                (g.cx + body * 0.55, ridge),
                (g.cx - body * 0.55, ridge),
            ],
            fill=g.accent,
        )
    d.line([(g.cx, g.y(t_spire)), (g.cx, g.y(1.0))], fill=g.accent, width=g.lw(0.014))
    for t in np.linspace(t_spire + 0.02, 0.97, 3):
        _rect(d, g.cx - g.lw(0.02), g.y(t) - g.lw(0.008), g.cx + g.lw(0.02), g.y(t), g.accent)


def _draw_obelisk(d: ImageDraw.ImageDraw, rng: np.random.Generator, g: _Geom) -> None:
    """Obelisk: a thin, solid, slightly tapering shaft with a pyramidion, often on a plinth."""
    half = g.width / 2
    t0 = 0.0
    if rng.random() < 0.7:  # stepped plinth
        for k, w in enumerate((2.6, 2.0)):
            t1 = t0 + rng.uniform(0.03, 0.05)
            _rect(d, g.cx - half * w, g.y(t1), g.cx + half * w, g.y(t0), g.dark if k else g.main)
            t0 = t1
    t_shaft = rng.uniform(0.88, 0.93)
    top = half * rng.uniform(0.6, 0.8)
    d.polygon(
        [
            (g.cx - half, g.y(t0)),
            (g.cx + half, g.y(t0)),
            (g.cx + top, g.y(t_shaft)),
            (g.cx - top, g.y(t_shaft)),
        ],
        fill=g.main,
    )
    if rng.random() < 0.5:  # a face edge showing two sides of the square shaft
        s = rng.choice([-1, 1])
        d.polygon(
            [
                (g.cx + s * half * 0.3, g.y(t0)),
                (g.cx + s * half, g.y(t0)),
                (g.cx + s * top, g.y(t_shaft)),
                (g.cx + s * top * 0.3, g.y(t_shaft)),
            ],
            fill=g.dark,
        )
    d.polygon(
        [(g.cx - top, g.y(t_shaft)), (g.cx + top, g.y(t_shaft)), (g.cx, g.y(1.0))], fill=g.light
    )
    if rng.random() < 0.5:  # engraved marks
        for t in np.linspace(t0 + 0.1, t_shaft - 0.1, int(rng.integers(4, 9))):
            _rect(d, g.cx - top * 0.25, g.y(t) - g.unit, g.cx + top * 0.25, g.y(t), g.dark)


_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, np.random.Generator, _Geom], None]] = {
    "tower": _draw_tower,
    "arch": _draw_arch,
    "dome": _draw_dome,
    "pyramid": _draw_pyramid,
    "bridge": _draw_bridge,
    "lighthouse": _draw_lighthouse,
    "pagoda": _draw_pagoda,
    "obelisk": _draw_obelisk,
}

#: Nominal width / height of each structure (jittered per image).
_ASPECT: dict[str, float] = {
    "tower": 0.55,
    "arch": 0.95,
    "dome": 0.85,
    "pyramid": 1.5,
    "bridge": 2.2,
    "lighthouse": 0.32,
    "pagoda": 0.6,
    "obelisk": 0.11,
}

# --------------------------------------------------------------------------------------------
# Scene: sky, clouds, hills, ground, water, distractor buildings, vegetation


def _sky(rng: np.random.Generator, size: int) -> tuple[Image.Image, RGB]:
    """A vertical sky gradient (day, sunset or overcast); returns the image and mid colour."""
    mode = rng.choice(["day", "sunset", "overcast"], p=[0.5, 0.25, 0.25])
    if mode == "day":
        stops = [
            _hsv(rng.uniform(0.55, 0.64), rng.uniform(0.4, 0.8), rng.uniform(0.65, 0.95)),
            _hsv(rng.uniform(0.52, 0.6), rng.uniform(0.1, 0.35), rng.uniform(0.85, 1.0)),
        ]
    elif mode == "sunset":
        stops = [
            _hsv(rng.uniform(0.6, 0.8), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6)),
            _hsv(rng.uniform(0.9, 1.0), rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.9)),
            _hsv(rng.uniform(0.03, 0.12), rng.uniform(0.5, 0.9), rng.uniform(0.85, 1.0)),
        ]
    else:
        v = rng.uniform(0.5, 0.85)
        stops = [
            _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.0, 0.12), v),
            _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.0, 0.08), min(1.0, v + 0.15)),
        ]
    stops_arr = np.array(stops, dtype=np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    pos = np.linspace(0.0, 1.0, len(stops))
    column = np.stack([np.interp(t, pos, stops_arr[:, c]) for c in range(3)], axis=-1)
    strip = Image.fromarray(column[:, None, :].astype(np.uint8), "RGB")
    r, g, b = (int(v) for v in column[size // 3])
    return strip.resize((size, size), Image.NEAREST), (r, g, b)


def _clouds(rng: np.random.Generator, size: int, horizon: float) -> Image.Image | None:
    """Soft clouds as an RGBA layer (drawn at quarter resolution, blurred, then upscaled)."""
    n = int(rng.integers(0, 6))
    if n == 0:
        return None
    small = max(8, size // 4)
    k = small / size
    layer = Image.new("RGBA", (small, small), _CLEAR)
    d = ImageDraw.Draw(layer)
    for _ in range(n):
        cx, cy = rng.uniform(0, size), rng.uniform(0.03, 0.9) * horizon
        w = rng.uniform(0.08, 0.3) * size
        shade = int(rng.uniform(200, 255))
        alpha = int(rng.uniform(110, 230))
        for _ in range(int(rng.integers(2, 6))):
            _ellipse(
                d,
                k * (cx + rng.uniform(-0.5, 0.5) * w),
                k * (cy + rng.uniform(-0.15, 0.15) * w),
                k * w * rng.uniform(0.25, 0.5),
                k * w * rng.uniform(0.12, 0.25),
                (shade, shade, shade, alpha),
            )
    layer = layer.filter(ImageFilter.GaussianBlur(max(0.5, small / 120)))
    return layer.resize((size, size), Image.BILINEAR)


def _hills(
    d: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    size: int,
    horizon: float,
    sky: RGB,
    ground: RGB,
) -> None:
    xs = np.linspace(0, size, 17)
    for depth in range(int(rng.integers(0, 3))):
        amp = rng.uniform(0.04, 0.18) * size / (depth + 1)
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 4.0) * np.pi / size
        ys = horizon - amp * (0.55 + 0.45 * np.sin(freq * xs + phase))
        ys = ys + rng.uniform(-0.1, 0.1, xs.shape) * amp
        color = _mix(ground, sky, rng.uniform(0.3, 0.6) / (depth + 1))
        d.polygon([(0, horizon + 1), *zip(xs, ys, strict=True), (size, horizon + 1)], fill=color)


def _building(
    d: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    x: float,
    bottom: float,
    w: float,
    h: float,
    color: RGB,
) -> None:
    """A plain flat-roofed distractor building (never one of the landmark shapes)."""
    _rect(d, x, bottom - h, x + w, bottom, color)
    if rng.random() < 0.3:  # setback storey
        _rect(d, x + w * 0.2, bottom - h * 1.15, x + w * 0.8, bottom - h, color)
    if rng.random() < 0.6 and w > 6 and h > 6:  # window grid
        win = _scale(color, rng.choice([0.6, 1.35]))
        cols, rows = max(1, int(w / (h * 0.12 + 4))), max(1, int(h / (w * 0.15 + 4)))
        for i in range(min(cols, 8)):
            for j in range(min(rows, 12)):
                wx = x + w * (i + 0.3) / cols
                wy = bottom - h + h * (j + 0.25) / rows
                _rect(d, wx, wy, wx + w * 0.4 / cols, wy + h * 0.45 / rows, win)


def _tree(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, bottom: float, h: float, leaf: RGB
) -> None:
    trunk = _scale(leaf, 0.45)
    kind = rng.integers(0, 3)
    if kind == 0:  # deciduous
        _rect(d, x - h * 0.04, bottom - h * 0.5, x + h * 0.04, bottom, trunk)
        for _ in range(int(rng.integers(1, 4))):
            _ellipse(
                d,
                x + rng.uniform(-0.12, 0.12) * h,
                bottom - h * rng.uniform(0.6, 0.75),
                h * rng.uniform(0.18, 0.3),
                h * rng.uniform(0.2, 0.28),
                _jitter(rng, leaf, 20),
            )
    elif kind == 1:  # conifer: stacked narrow triangles on a trunk
        _rect(d, x - h * 0.03, bottom - h * 0.2, x + h * 0.03, bottom, trunk)
        for k in range(3):
            yb = bottom - h * (0.15 + 0.22 * k)
            w = h * (0.22 - 0.05 * k)
            d.polygon([(x - w, yb), (x + w, yb), (x, yb - h * 0.4)], fill=leaf)
    else:  # bush
        for _ in range(int(rng.integers(2, 5))):
            _ellipse(
                d,
                x + rng.uniform(-0.3, 0.3) * h,
                bottom - h * 0.2,
                h * rng.uniform(0.2, 0.35),
                h * rng.uniform(0.15, 0.25),
                _jitter(rng, leaf, 20),
            )


def _leaf_color(rng: np.random.Generator) -> RGB:
    hue = rng.uniform(0.2, 0.4) if rng.random() < 0.8 else rng.uniform(0.03, 0.12)
    return _hsv(hue, rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.6))


def _shade_and_rotate(
    layer: Image.Image, rng: np.random.Generator, cx: float, base: float, h: float, width: float
) -> Image.Image:
    """Shades the structure from one side and rotates it by up to 15 degrees about (cx, base).

    Works on the bounding box of the drawn structure only (for speed) and returns the rotated
    crop with ``info["offset"]`` set to where its top-left corner goes on the canvas.
    """
    x0, y0, x1, y1 = layer.getbbox() or (0, 0, 1, 1)
    arr = np.asarray(layer.crop((x0, y0, x1, y1)), dtype=np.float32).copy()
    xs = (np.arange(x0, x1, dtype=np.float32) - cx) / max(width / 2, 1.0)
    side = rng.choice([-1.0, 1.0])
    shade_x = 1.0 - rng.uniform(0.1, 0.35) * side * np.clip(xs, -1.0, 1.0)
    ys = np.clip((base - np.arange(y0, y1, dtype=np.float32)) / h, 0.0, 1.0)
    shade_y = 1.0 - rng.uniform(0.0, 0.2) * (1.0 - ys)
    arr[..., :3] *= (shade_y[:, None] * shade_x[None, :])[..., None]
    crop = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGBA")
    angle = rng.uniform(-15, 15)
    rotated = crop.rotate(angle, resample=Image.BICUBIC, expand=True)
    # rotate(expand=True) turns about the crop centre c and keeps c at the new image centre;
    # turning about the pivot p instead moves everything by (p - c) - R (p - c).
    theta = np.deg2rad(angle)
    dx, dy = cx - (x0 + x1) / 2, base - (y0 + y1) / 2
    rx = dx * np.cos(theta) + dy * np.sin(theta)
    ry = -dx * np.sin(theta) + dy * np.cos(theta)
    left = (x0 + x1) / 2 + dx - rx - rotated.width / 2
    top = (y0 + y1) / 2 + dy - ry - rotated.height / 2
    rotated.info["offset"] = (int(round(left)), int(round(top)))
    return rotated


# --------------------------------------------------------------------------------------------
# Scene composition


@dataclass(frozen=True)
class _Placement:
    """Where the structure stands in the supersampled canvas, and the horizon height."""

    size: int
    cx: float
    base: float
    h: float
    width: float
    horizon: float


def _place(rng: np.random.Generator, name: str, size: int) -> _Placement:
    """Structure height 35-90% of the frame (wide shapes shrunk to fit), position, horizon."""
    h = rng.uniform(0.35, 0.9) * size
    width = _ASPECT[name] * rng.uniform(0.8, 1.25) * h
    max_width = rng.uniform(0.9, 1.15) * size
    if width > max_width:
        h *= max_width / width
        width = max_width
    slack = max(0.06 * size, (size - width) / 2 + 0.05 * width)
    cx = size / 2 + rng.uniform(-slack, slack)
    base = rng.uniform(max(h + 0.03 * size, 0.55 * size), 0.97 * size)
    horizon = rng.uniform(0.4 * size, base)
    return _Placement(size, cx, base, h, width, horizon)


def _background(
    rng: np.random.Generator, name: str, size: int, p: _Placement
) -> tuple[Image.Image, RGB]:
    """Sky, clouds, hills, ground, water and distractors; returns the RGBA canvas and sky colour."""
    sky, sky_mid = _sky(rng, size)
    canvas = sky.convert("RGBA")
    clouds = _clouds(rng, size, p.horizon)
    if clouds is not None:
        canvas.alpha_composite(clouds)
    d = ImageDraw.Draw(canvas)
    ground = _hsv(
        rng.choice([rng.uniform(0.2, 0.4), rng.uniform(0.07, 0.14)]),
        rng.uniform(0.2, 0.6),
        rng.uniform(0.3, 0.7),
    )
    _hills(d, rng, size, p.horizon, sky_mid, ground)
    _rect(d, 0, p.horizon, size, size, ground)
    for _ in range(int(rng.integers(0, 6))):  # ground texture patches
        _ellipse(
            d,
            rng.uniform(0, size),
            rng.uniform(p.horizon, size),
            rng.uniform(0.05, 0.3) * size,
            rng.uniform(0.01, 0.04) * size,
            _jitter(rng, ground, 25),
        )
    if name == "bridge" or rng.random() < 0.25:  # lake or river (always under a bridge)
        water = _mix(sky_mid, _hsv(rng.uniform(0.5, 0.65), 0.5, rng.uniform(0.3, 0.6)), 0.6)
        bottom = size if name == "bridge" else rng.uniform(min(p.horizon + 0.05 * size, size), size)
        _rect(d, 0, p.horizon, size, bottom, water)
        for _ in range(int(rng.integers(2, 8))):  # ripples
            y, x = rng.uniform(p.horizon, bottom), rng.uniform(0, size)
            end = x + rng.uniform(0.05, 0.2) * size
            d.line([(x, y), (end, y)], fill=_scale(water, 1.2), width=_SUPERSAMPLE)

    # Distractors behind the structure: plain buildings and small trees on the horizon.
    for _ in range(int(rng.integers(0, 4))):
        bw, bh = rng.uniform(0.04, 0.25) * size, rng.uniform(0.05, 0.45) * size
        hue, sat, val = rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.25, 0.8)
        color = _mix(_hsv(hue, sat, val), sky_mid, rng.uniform(0.15, 0.5))  # hazy with distance
        x = rng.uniform(-bw / 2, size - bw / 2)
        _building(d, rng, x, p.horizon + rng.uniform(0, 0.02) * size, bw, bh, color)
    for _ in range(int(rng.integers(0, 7))):
        x, y = rng.uniform(0, size), p.horizon + rng.uniform(0, 0.03) * size
        _tree(d, rng, x, y, rng.uniform(0.03, 0.12) * size, _leaf_color(rng))
    return canvas, sky_mid


def _structure(
    canvas: Image.Image, rng: np.random.Generator, name: str, p: _Placement, sky_mid: RGB
) -> None:
    """Draws the class's structure in a random colour, shaded and slightly rotated."""
    # Colour is random for every class (never a class cue), but kept distinct from the sky.
    main = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.55), rng.uniform(0.3, 0.95))
    if abs(_luma(main) - _luma(sky_mid)) < 45:
        main = _scale(main, 0.55 if _luma(sky_mid) > 110 else 1.6)
    accent = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.8), rng.uniform(0.3, 1.0))
    if abs(_luma(accent) - _luma(main)) < 60:
        accent = _scale(accent, 0.5 if _luma(main) > 120 else 1.8)
    dark, light = _scale(main, 0.65), _scale(main, 1.25)
    geom = _Geom(p.cx, p.base, p.h, p.width, float(_SUPERSAMPLE), main, dark, light, accent)
    layer = Image.new("RGBA", (p.size, p.size), _CLEAR)
    _DRAWERS[name](ImageDraw.Draw(layer), rng, geom)
    layer = _shade_and_rotate(layer, rng, p.cx, p.base, p.h, p.width)
    canvas.paste(layer, layer.info["offset"], layer)


def _foreground(canvas: Image.Image, rng: np.random.Generator, p: _Placement) -> None:
    """Trees and bushes in front and, sometimes, an object partially occluding the structure."""
    d = ImageDraw.Draw(canvas)
    size = p.size
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, size), rng.uniform(p.base, 1.05 * size)
        _tree(d, rng, x, y, rng.uniform(0.08, 0.3) * size, _leaf_color(rng))
    if rng.random() >= 0.2:
        return
    kind = rng.integers(0, 3)
    left, top = p.cx - p.width / 2, p.base - p.h
    if kind == 0:  # big tree in front of one side
        x = p.cx + rng.choice([-1, 1]) * p.width * rng.uniform(0.25, 0.5)
        _tree(d, rng, x, 1.02 * size, rng.uniform(0.4, 0.7) * p.h, _leaf_color(rng))
    elif kind == 1:  # wall or hedge across the lower part
        wall = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.4), rng.uniform(0.2, 0.7))
        _rect(d, 0, p.base - rng.uniform(0.1, 0.3) * p.h, size, size, wall)
    else:  # plain building in front of one edge
        bw = rng.uniform(0.15, 0.35) * max(p.width, 0.3 * size)
        bx = left - bw * 0.6 if rng.random() < 0.5 else left + p.width - bw * 0.4
        color = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.2, 0.7))
        _building(d, rng, bx, size, bw, size - top - rng.uniform(0.3, 0.6) * p.h, color)


def _camera(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera effects: sometimes blur, then exposure/contrast/colour cast and sensor noise."""
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    pixels = np.asarray(image, dtype=np.float32)
    mean = pixels.mean()
    gain = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    pixels = (pixels - mean) * rng.uniform(0.75, 1.2) + mean + rng.uniform(-25, 25)
    pixels = pixels * gain + rng.normal(0.0, rng.uniform(1.0, 6.0), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# Public API


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def render(label: int, index: int, image_size: int = 160, seed: int = 0) -> Image.Image:
    """Draws one demo landmark photo.

    The scene depends only on ``(label, index, seed)``; ``image_size`` only sets the output
    resolution. Identical arguments always give an identical image.

    Args:
        label: Class label, an index into :data:`CLASS_NAMES`.
        index: Non-negative example number within the class.
        image_size: Width and height of the square output, at least :data:`MIN_IMAGE_SIZE`.
        seed: Non-negative data set seed; different seeds give independent data sets.

    Returns:
        An RGB ``PIL.Image.Image`` of size ``(image_size, image_size)``.

    Raises:
        ValueError: If an argument is out of range; the message names the argument.
    """
    _check_int("label", label, 0, len(CLASS_NAMES) - 1)
    _check_int("index", index, 0)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    _check_int("seed", seed, 0)
    rng = np.random.default_rng([int(seed), int(label), int(index)])
    name = CLASS_NAMES[label]
    size = image_size * _SUPERSAMPLE
    place = _place(rng, name, size)
    canvas, sky_mid = _background(rng, name, size, place)
    _structure(canvas, rng, name, place, sky_mid)
    _foreground(canvas, rng, place)
    image = canvas.convert("RGB").resize((image_size, image_size), Image.LANCZOS)
    return _camera(image, rng)


def encode_jpeg(image: Image.Image) -> bytes:
    """Encodes an image as baseline JPEG with fixed settings, so equal images give equal bytes.

    Args:
        image: Image to encode (converted to RGB if necessary).

    Returns:
        The JPEG bytes.
    """
    buffer = io.BytesIO()
    image.convert("RGB").save(
        buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False, subsampling=2
    )
    return buffer.getvalue()


def make_image(label: int, index: int, image_size: int = 160, seed: int = 0) -> DemoImage:
    """Renders and JPEG-encodes a single example (the unit that :func:`generate` yields).

    Args:
        label: Class label, an index into :data:`CLASS_NAMES`.
        index: Non-negative example number within the class.
        image_size: Width and height of the square output, at least :data:`MIN_IMAGE_SIZE`.
        seed: Non-negative data set seed.

    Returns:
        The :class:`DemoImage` for these arguments.

    Raises:
        ValueError: If an argument is out of range; the message names the argument.
    """
    image = render(label, index, image_size=image_size, seed=seed)
    name = CLASS_NAMES[label]
    return DemoImage(f"demo_{name}_{index:05d}", name, int(label), encode_jpeg(image))


def generate(
    images_per_class: int = 120,
    image_size: int = 160,
    seed: int = 0,
    num_classes: int = len(CLASS_NAMES),
) -> Iterator[DemoImage]:
    """Yields a deterministic demo data set of JPEG-encoded landmark photos.

    Images are yielded *interleaved* by class: index 0 of labels ``0..num_classes-1``, then
    index 1 of every label, and so on. Any prefix of the stream is therefore (almost) class
    balanced. Example ``(label, index)`` is identical to ``make_image(label, index, ...)``.

    Args:
        images_per_class: Non-negative number of images per class.
        image_size: Width and height of the square images, at least :data:`MIN_IMAGE_SIZE`.
        seed: Non-negative data set seed; different seeds give independent data sets.
        num_classes: Use the first ``num_classes`` entries of :data:`CLASS_NAMES` (1 to 8).

    Yields:
        ``images_per_class * num_classes`` :class:`DemoImage` items.

    Raises:
        ValueError: If an argument is out of range; raised on the call itself, before any
            image is produced, and the message names the argument.
    """
    _check_int("images_per_class", images_per_class, 0)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    _check_int("seed", seed, 0)
    _check_int("num_classes", num_classes, 1, len(CLASS_NAMES))

    def _iterate() -> Iterator[DemoImage]:
        for index in range(images_per_class):
            for label in range(num_classes):
                yield make_image(label, index, image_size=image_size, seed=seed)

    return _iterate()


def _encoded(label: int, index: int, image_size: int, seed: int) -> bytes:
    return encode_jpeg(render(label, index, image_size=image_size, seed=seed))


@dataclass(frozen=True)
class DemoOptions:
    """--source=demo's options."""

    demo_images_per_class: int = setting(150, "For --source=demo: images drawn per class.")
    demo_image_size: int = setting(128, "For --source=demo: side of the drawn images in pixels.")


def source(config: PrepareConfig, options: DemoOptions) -> Source:
    """Opens the demo data set as an ``lmrec.prepare`` source (``--source=demo``).

    Uses all :data:`CLASS_NAMES`, ``options.demo_images_per_class`` images per class
    (interleaved by class, as in :func:`generate`), ``options.demo_image_size`` pixels and
    ``config.seed``. Images are drawn lazily, when an item's bytes are read.

    Args:
        config: The prepare settings (its seed).
        options: The demo's own settings.

    Returns:
        A ``Source`` named ``"demo"`` whose item ids match :class:`DemoImage` ids.

    Raises:
        lmrec.errors.UserError: If a demo flag is out of range; the message names the flag.
    """
    per_class, size, seed = options.demo_images_per_class, options.demo_image_size, config.seed
    if per_class < 1:
        raise UserError(f"--demo_images_per_class must be >= 1, got {per_class}")
    if size < MIN_IMAGE_SIZE:
        raise UserError(f"--demo_image_size must be >= {MIN_IMAGE_SIZE}, got {size}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0 for --source=demo, got {seed}")

    def items() -> Iterator[SourceItem]:
        for index in range(per_class):
            for label, name in enumerate(CLASS_NAMES):
                yield SourceItem(
                    image_id=f"demo_{name}_{index:05d}",
                    class_name=name,
                    load=functools.partial(_encoded, label, index, size, seed),
                )

    return Source(name="demo", class_names=list(CLASS_NAMES), items=items)
