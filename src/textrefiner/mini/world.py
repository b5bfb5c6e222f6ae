"""A procedurally drawn world of objects with composable visual attributes, and its captions.

Every scene is one object on a background: a ``shape`` (15 kinds, some of them look-alikes:
circle / oval / octagon, square / rectangle / diamond, pentagon / hexagon), a ``colour``
(10), a fill ``pattern`` (plain, striped, dotted, checkered), a ``size`` (small, medium,
large), a ``position`` (centre, left, right, top, bottom) and a ``style``: how the picture is
taken (background, clutter, noise, contrast, a sepia cast). Pictures are drawn with numpy at twice the
size and box-filtered down (anti-aliased edges), in about 0.1 ms each:

    rng = np.random.default_rng(0)
    scene = sample_scene(rng)
    pixels = draw(scene, rng)            # (32, 32, 3) uint8
    text = caption(scene, rng)           # e.g. "a photo of a small red striped triangle."

Everything is a pure function of the numpy ``Generator`` passed in, so a seed fixes the world.
The mini CLIP is pretrained on the ``"studio"`` style (clean backgrounds, little noise); the
mini datasets draw their images in the other styles, a distribution shift that zero-shot
transfer must survive and prompt learning can adapt to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = (
    "circle", "oval", "octagon", "square", "rectangle", "diamond", "triangle", "pentagon", "hexagon",
    "star", "cross", "ring", "crescent", "heart", "arrow",
)
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.86, 0.12, 0.12), "orange": (0.96, 0.52, 0.06), "yellow": (0.95, 0.88, 0.12),
    "green": (0.15, 0.68, 0.2), "cyan": (0.1, 0.8, 0.85), "blue": (0.12, 0.25, 0.88),
    "purple": (0.55, 0.18, 0.75), "pink": (0.98, 0.5, 0.72), "brown": (0.5, 0.3, 0.12),
    "white": (0.97, 0.97, 0.97),
}
PATTERNS = ("plain", "striped", "dotted", "checkered")
SIZES = ("small", "medium", "large")
POSITIONS = ("centre", "left", "right", "top", "bottom")
STYLES = ("studio", "clutter", "noisy", "night", "faded", "sepia")

# Words a caption can use besides the attribute names (the mini tokenizer's vocabulary).
TEMPLATES = ("a photo of a {}.", "a {}.", "an image of a {}.", "a picture of a {}.", "a drawing of a {}.")
FILLER_WORDS = ("a", "an", "photo", "image", "picture", "drawing", "of", "shape", "on", "the", "in", "at", "centre")

_SIZE_RADIUS = {"small": (0.2, 0.26), "medium": (0.3, 0.36), "large": (0.4, 0.46)}  # fraction of the side
_OFFSET = {"centre": (0.0, 0.0), "left": (-1.0, 0.0), "right": (1.0, 0.0), "top": (0.0, -1.0), "bottom": (0.0, 1.0)}
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])  # RGB -> sepia RGB
_UPSCALE = 2  # drawn at twice the size, then averaged 2x2


@dataclass(frozen=True)
class Scene:
    """The attributes of one picture (all names from the tuples above)."""

    shape: str
    colour: str
    pattern: str
    size: str
    position: str
    style: str = "studio"


def sample_scene(
    rng: np.random.Generator,
    *,
    shapes: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] | None = None,
    patterns: tuple[str, ...] = PATTERNS,
    sizes: tuple[str, ...] = SIZES,
    positions: tuple[str, ...] = POSITIONS,
    style: str = "studio",
) -> Scene:
    """A scene with each attribute drawn uniformly from the allowed values."""
    colours = tuple(COLOURS) if colours is None else colours

    def pick(values):
        return values[int(rng.integers(len(values)))]

    return Scene(pick(shapes), pick(colours), pick(patterns), pick(sizes), pick(positions), style)


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-mask of ``shape`` on unit-radius object coordinates ``x, y`` (y points down)."""
    r = np.hypot(x, y)
    if shape == "circle":
        return r < 0.95
    if shape == "oval":
        return (x / 1.0) ** 2 + (y / 0.55) ** 2 < 1.0
    if shape == "rectangle":
        return (np.abs(x) < 0.95) & (np.abs(y) < 0.5)
    if shape == "ring":
        return (r < 0.95) & (r > 0.6)
    if shape == "crescent":
        return (r < 0.95) & (np.hypot(x - 0.45, y + 0.1) > 0.75)
    if shape == "cross":
        return ((np.abs(x) < 0.3) & (np.abs(y) < 0.95)) | ((np.abs(y) < 0.3) & (np.abs(x) < 0.95))
    if shape == "star":
        theta = np.arctan2(y, x) + np.pi / 2
        return r < 0.95 * (0.5 + 0.5 * np.abs(np.cos(2.5 * theta)) ** 1.5)
    if shape == "heart":
        u, v = x * 1.15, -(y * 1.15 - 0.1)
        return (u * u + v * v - 1.0) ** 3 - u * u * v ** 3 < 0.0
    if shape == "arrow":
        shaft = (np.abs(y) < 0.22) & (x > -0.95) & (x < 0.15)
        head = (x >= 0.15) & (x < 0.95) & (np.abs(y) < 0.95 * (0.95 - x) / 0.8)
        return shaft | head
    sides = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}[shape]
    # A regular polygon as an intersection of half-planes; squares have flat sides, diamonds a vertex up.
    start = {"square": np.pi / 4, "diamond": 0.0, "octagon": np.pi / 8}.get(shape, -np.pi / 2)
    apothem = 0.95 * np.cos(np.pi / sides)
    inside = np.ones_like(x, dtype=bool)
    for k in range(sides):
        # normal of side k: between vertices at start + 2πk/n and start + 2π(k+1)/n
        angle = start + np.pi * (2 * k + 1) / sides
        inside &= x * np.cos(angle) + y * np.sin(angle) < apothem
    return inside


def _rotation(shape: str, rng: np.random.Generator) -> float:
    if shape in ("square", "diamond", "rectangle"):
        return float(rng.uniform(-0.08, 0.08)) + (np.pi / 2 if shape == "rectangle" and rng.random() < 0.3 else 0.0)
    if shape in ("oval",):
        return float(rng.uniform(-0.3, 0.3)) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
    if shape == "arrow":
        return float(rng.integers(4)) * np.pi / 2 + float(rng.uniform(-0.2, 0.2))
    return float(rng.uniform(-0.25, 0.25))


def _pattern(pattern: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill weights in [0, 1]: 1 = the object's colour, 0 = the pattern's second shade."""
    if pattern == "plain":
        return np.ones_like(x)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    if pattern == "striped":
        angle = rng.uniform(0, np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
        return (np.sin(t * 2 * np.pi * 2.2 + phase[0]) > 0).astype(np.float64)
    if pattern == "checkered":
        return ((np.sin(x * 2 * np.pi * 1.6 + phase[0]) > 0) ^ (np.sin(y * 2 * np.pi * 1.6 + phase[1]) > 0)).astype(np.float64)
    # dotted: a grid of round dots
    period = 0.5
    u = np.mod(x + phase[0] / 10, period) - period / 2
    v = np.mod(y + phase[1] / 10, period) - period / 2
    return (np.hypot(u, v) > 0.14).astype(np.float64)


def _background(style: str, h: int, w: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) background in [0, 1] for ``style``."""
    if style == "night":
        level = rng.uniform(0.02, 0.16)
        tint = rng.uniform(-0.03, 0.03, size=3)
        return np.broadcast_to(level + tint, (h, w, 3)).copy()
    if style == "faded":
        level = rng.uniform(0.7, 0.85)
        return np.broadcast_to(level + rng.uniform(-0.03, 0.03, size=3), (h, w, 3)).copy()
    level = rng.uniform(0.35, 0.95) if style != "clutter" else rng.uniform(0.3, 0.8)
    tint = rng.uniform(-0.05, 0.05, size=3)
    grad = rng.uniform(-0.15, 0.15, size=2)
    base = level + grad[0] * xx[..., None] + grad[1] * yy[..., None] + tint  # (h, w, 3)
    if style == "clutter":  # random coloured bars and blobs behind the object
        for _ in range(int(rng.integers(4, 8))):
            colour = rng.uniform(0, 1, size=3)
            cx, cy, rx, ry = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.5)
            if rng.random() < 0.5:
                m = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
            else:
                m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            base = np.where(m[..., None], 0.5 * base + 0.5 * colour, base)
    return base


def draw(scene: Scene, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """The picture of ``scene``: ``(image_size, image_size, 3)`` uint8, drawn from ``rng``."""
    n = image_size * _UPSCALE
    coords = (np.arange(n) + 0.5) / n * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = np.meshgrid(coords, coords, indexing="ij")  # (n, n)
    img = _background(scene.style, n, n, yy, xx, rng)

    lo, hi = _SIZE_RADIUS[scene.size]
    radius = rng.uniform(lo, hi) * 2  # in [-1, 1] units
    room = max(0.0, 1.0 - radius - 0.02)
    ox, oy = _OFFSET[scene.position]
    cx = ox * room * rng.uniform(0.7, 1.0) + rng.uniform(-0.08, 0.08)
    cy = oy * room * rng.uniform(0.7, 1.0) + rng.uniform(-0.08, 0.08)
    angle = _rotation(scene.shape, rng)
    c, s = np.cos(angle), np.sin(angle)
    x, y = (xx - cx) / radius, (yy - cy) / radius
    x, y = c * x + s * y, -s * x + c * y  # object coordinates, unit radius
    mask = _shape_mask(scene.shape, x, y)

    colour = np.clip(np.array(COLOURS[scene.colour]) + rng.uniform(-0.05, 0.05, size=3), 0, 1)
    second = colour * 0.35 if scene.colour != "white" else colour * 0.25
    if scene.pattern == "dotted":
        second = 0.35 * colour + 0.65 * (np.array([0.05, 0.05, 0.05]) if colour.mean() > 0.6 else np.array([1.0, 1.0, 1.0]))
    fill = _pattern(scene.pattern, x, y, rng)[..., None]  # (n, n, 1)
    obj = fill * colour + (1 - fill) * second  # (n, n, 3)
    if scene.style == "night":
        obj = obj * rng.uniform(0.45, 0.7)
    elif scene.style == "faded":
        grey = obj.mean(-1, keepdims=True)
        obj = 0.3 * obj + 0.7 * (0.5 * grey + 0.5 * 0.8)
    img = np.where(mask[..., None], obj, img)
    if scene.style == "sepia":  # an old print: colours pulled toward brown tones, part of the hue left
        img = 0.3 * img + 0.7 * np.clip(img @ _SEPIA.T, 0, 1)
    img = img.reshape(image_size, _UPSCALE, image_size, _UPSCALE, 3).mean(axis=(1, 3))  # anti-alias

    sigma = {"studio": rng.uniform(0.0, 0.04), "noisy": rng.uniform(0.09, 0.15)}.get(scene.style, rng.uniform(0.02, 0.06))
    img = img + rng.normal(0.0, sigma, size=img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def caption(scene: Scene, rng: np.random.Generator, *, keep: float = 0.6) -> str:
    """A caption naming a random subset of the scene's attributes, e.g. ``"a photo of a red striped shape."``.

    Each of size, colour and pattern is named with probability ``keep`` (medium size and plain
    fill only sometimes, as people leave them out), the shape with probability 0.8 (else the
    noun is ``shape``), the position (not centre) with probability 0.3.
    """
    words = []
    if scene.size != "medium" and rng.random() < keep:
        words.append(scene.size)
    if rng.random() < keep:
        words.append(scene.colour)
    if rng.random() < (keep if scene.pattern != "plain" else keep / 2):
        words.append(scene.pattern)
    words.append(scene.shape if rng.random() < 0.8 else "shape")
    if scene.position != "centre" and rng.random() < 0.3:
        words += ["on", "the", scene.position]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(" ".join(words))


def vocabulary() -> list[str]:
    """Every word a caption or a mini class name can contain, sorted."""
    words = set(SHAPES) | set(COLOURS) | set(PATTERNS) | set(SIZES) | set(POSITIONS) | set(FILLER_WORDS)
    return sorted(words)
