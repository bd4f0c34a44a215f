"""Synthetic stand-ins of the catalog's datasets, written in the layout of the official downloads,
and of a user's own dataset in a layout of its own (`write_custom_tree`).

Why: the real archives are tens of GB behind manual downloads, yet every code path (prepare,
splits, training, transfer, MLflow logging) must run in tests and on a laptop. So `write_synthetic`
writes small trees that look, on disk, exactly like the unpacked archives (folder names, file
names, TIFF vs JPEG, AID's 600 px, UCM's odd sizes, MLRSNet's label CSVs with real rows) including
the mess that real copies carry (PNG behind `.jpg`, CMYK/grey/palette/RGBA images, macOS junk).

The images are made learnable and transferable on purpose: every class name is mapped to a
concept (forest, beach, storage tank...) and every concept has one look (colours, a shape kind,
a texture), so a model can learn the classes and a class with the same meaning in another
dataset looks alike. Each image is its look plus seeded jitter: output is byte-identical across
runs. Every tree carries `RSSC_SYNTHETIC.json`, so runs on it are flagged as synthetic.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import json
import re
import shutil
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from rssc_mlflow.data import catalog

SYNTHETIC_MARKER = "RSSC_SYNTHETIC.json"
GENERATOR = "rssc_mlflow.data.synth"
LABELS_SAMPLE = "mlrsnet_labels_sample.csv.gz"  # in rssc_mlflow.resources
TREES = ("mlrsnet", "resisc45", "patternnet", "rsicb256", "aid", "ucm", "imagenet100",
         "whu_rs19", "rsscn7", "eurosat")
# Image side of the real data where it is not 256 px: synthetic images keep the ratio to
# `image_size` (AID at 64 -> 150 px), never below 16 px.
NATIVE_SIDE = {"aid": 600, "whu_rs19": 600, "rsscn7": 400, "eurosat": 64}
# A real ImageNet-1k train folder holds 1000 wnids; these three are not in the ImageNet-100 list,
# so a prepare step must pick the listed ones instead of taking every folder.
IMAGENET_EXTRA_WNIDS = ("n01440764", "n01443537", "n15075141")
# ImageNet's validation images sorted by wnid next to `train` (see builders.imagenet100):
# `val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG`, numbered across all wnids like the official files.
IMAGENET_VAL_DIR = "val"
RSICB256_TOP = "RSI-CB256"  # catalog.archive_root is "" (copies differ); the usual name
_SAMPLE_HEAD_ROWS = 60  # rows per category kept in the labels sample ...
_SAMPLE_MAX_ANOMALIES = 20  # ... plus this many anomalous rows


def tree_of(key: str) -> str:
    """The tree a catalog key reads: all MLRSNet views share the one MLRSNet download."""
    return "mlrsnet" if catalog.get_spec(key).is_mlrsnet else key


def is_synthetic_tree(path: Path) -> bool:
    """True when the marker is in `path` or in one of the two folders above it."""
    path = Path(path)
    return any((p / SYNTHETIC_MARKER).is_file() for p in (path, path.parent, path.parent.parent))


# --- Concepts and looks -------------------------------------------------------------------
def _normalise(name: str) -> str:
    # "StorageTanks", "storage_tank", "storagetanks", "harbor&port" -> one spelling each.
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)  # CamelCase split (AID)
    return re.sub(r"[^a-z]", "", name.lower())


# (concept, substrings of the normalised name); the FIRST rule that matches wins, so specific
# names come before the general ones they contain ("sparseforest" before "forest", "airport"
# before "port", "parking" before "park"). Concepts are distinct within every dataset (tested).
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("river_forest", ("riverprotectionforest",)), ("sparse_forest", ("sparseforest",)),
    ("tree_farm", ("christmastreefarm",)), ("forest", ("forest", "trees", "woodland")),
    ("storage_tank", ("storagetank", "tank")), ("storage_room", ("storageroom",)),
    ("railway_station", ("railwaystation",)), ("railway", ("railway",)),
    ("runway_marking", ("runwaymarking",)), ("runway", ("runway",)), ("airport", ("airport",)),
    ("airplane", ("airplane",)), ("parking_space", ("parkingspace",)), ("parking", ("parking",)),
    ("parkway", ("parkway",)), ("mobile_home", ("mobilehome",)),
    ("dense_residential", ("denseresidential",)),
    ("medium_residential", ("mediumresidential", "residents")),
    ("sparse_residential", ("sparseresidential",)),
    ("circular_farmland", ("circularfarmland",)), ("eroded_farmland", ("erodedfarmland",)),
    ("dry_farmland", ("dryfarm",)), ("greenhouse", ("greenhouse",)),
    ("farmland", ("farmland", "agricultural", "farm")), ("sea_ice", ("seaice",)),
    ("snow", ("snow",)), ("mountain", ("mountain",)), ("coastal_mansion", ("coastalmansion",)),
    ("coastline", ("coastline",)), ("beach", ("beach",)), ("wastewater", ("wastewater",)),
    ("lake", ("lake", "pond")), ("river", ("river",)), ("stream", ("stream",)),
    ("harbor", ("harbor", "port", "marina")), ("ferry_terminal", ("ferryterminal",)),
    ("container_yard", ("shippingyard", "container")), ("sea", ("sea", "ocean")),
    ("desert", ("desert",)), ("bareland", ("bareland", "baresoil")), ("golf", ("golf",)),
    ("tennis", ("tennis",)), ("baseball", ("baseball",)), ("basketball", ("basketball",)),
    ("football", ("football",)), ("track_field", ("groundtrackfield", "playground")),
    ("stadium", ("stadium",)), ("pool", ("swimm", "pool")),
    ("intersection", ("intersection", "crossroads")), ("roundabout", ("roundabout",)),
    ("overpass", ("overpass", "viaduct")), ("bridge", ("bridge",)),
    ("freeway", ("freeway", "highway")), ("road", ("road", "avenue")),
    ("commercial", ("commercial", "buildings", "citybuilding")),
    ("industrial", ("industrial",)), ("meadow", ("meadow", "grassland")),
    ("chaparral", ("chaparral", "shrub")), ("wetland", ("wetland",)), ("island", ("island",)),
    ("cloud", ("cloud",)), ("terrace", ("terrace",)), ("park", ("park",)),
    ("power_station", ("powerstation", "transformerstation")),
    ("transmission_tower", ("transmissiontower",)), ("wind_turbine", ("windturbine",)),
    ("solar_panel", ("solarpanel",)), ("church", ("church",)),
)  # fmt: skip

SHAPES = ("blobs", "discs", "rects", "cross", "stripes", "band", "grid", "ring", "split", "plain")
# concept: (shape, background colour, accent colour, density). Colours roughly as seen from
# above, so look-alike concepts (forest, meadow, golf) still differ in shape, shade or density.
_LOOKS: dict[str, tuple[str, str, str, float]] = {
    "forest":             ("blobs",   "#22461e", "#37702f", 2.5),
    "sparse_forest":      ("blobs",   "#968c64", "#2d5f28", 0.6),
    "river_forest":       ("band",    "#2c5a2a", "#3c5a6e", 1.0),
    "tree_farm":          ("grid",    "#786e50", "#2a5a26", 1.0),
    "storage_tank":       ("discs",   "#a0a08c", "#e6e6e0", 1.0),
    "storage_room":       ("rects",   "#82827d", "#c8c8d2", 0.6),
    "railway_station":    ("rects",   "#8c8278", "#5a5050", 1.0),
    "railway":            ("stripes", "#6e6958", "#463c37", 2.0),
    "runway_marking":     ("stripes", "#505055", "#ebebeb", 1.5),
    "runway":             ("band",    "#78826e", "#b4b4ae", 1.2),
    "airport":            ("rects",   "#a09b8c", "#5a5a60", 0.8),
    "airplane":           ("cross",   "#8c8c87", "#f5f5f5", 1.0),
    "parking_space":      ("stripes", "#464650", "#dcdcdc", 2.5),
    "parking":            ("rects",   "#5a5a60", "#b43c32", 2.5),
    "parkway":            ("band",    "#467a3c", "#7a7a7a", 1.0),
    "mobile_home":        ("rects",   "#969682", "#dcdcd7", 2.5),
    "dense_residential":  ("rects",   "#6e6460", "#b45a46", 2.5),
    "medium_residential": ("rects",   "#5a7850", "#b46e5a", 1.2),
    "sparse_residential": ("rects",   "#649050", "#c8967a", 0.4),
    "circular_farmland":  ("discs",   "#a08c5a", "#50963c", 0.4),
    "eroded_farmland":    ("stripes", "#a07850", "#6e5036", 0.7),
    "dry_farmland":       ("stripes", "#bea578", "#968664", 1.0),
    "greenhouse":         ("stripes", "#c8cdd2", "#8c98a8", 2.0),
    "farmland":           ("stripes", "#6e9646", "#a08c5a", 1.0),
    "sea_ice":            ("blobs",   "#3c5a78", "#c8d2dc", 2.0),
    "snow":               ("blobs",   "#ebeef2", "#8c8c9a", 0.5),
    "mountain":           ("stripes", "#6e6455", "#4a4236", 0.5),
    "coastal_mansion":    ("split",   "#46823c", "#285a8c", 1.0),
    "coastline":          ("split",   "#786e5a", "#285078", 1.0),
    "beach":              ("split",   "#dcc8a0", "#326e96", 1.0),
    "wastewater":         ("discs",   "#787870", "#3c645a", 0.8),
    "lake":               ("discs",   "#5a7846", "#1e3c5a", 0.25),
    "river":              ("band",    "#5a7846", "#325064", 1.0),
    "stream":             ("band",    "#506e41", "#3c5f6e", 0.5),
    "harbor":             ("stripes", "#284664", "#a0a5aa", 2.0),
    "ferry_terminal":     ("split",   "#8c8782", "#284664", 1.0),
    "container_yard":     ("rects",   "#78736e", "#c85a3c", 2.0),
    "sea":                ("plain",   "#193c64", "#285078", 1.0),
    "desert":             ("plain",   "#d7b482", "#be9664", 1.0),
    "bareland":           ("plain",   "#aa9678", "#8c785f", 1.0),
    "golf":               ("blobs",   "#3c6e32", "#78b45a", 0.5),
    "tennis":             ("rects",   "#507850", "#3c78aa", 0.5),
    "baseball":           ("discs",   "#508c3c", "#b4825a", 0.3),
    "basketball":         ("rects",   "#969696", "#c87850", 0.6),
    "football":           ("rects",   "#787870", "#3c963c", 0.2),
    "track_field":        ("ring",    "#508c46", "#b4463c", 1.0),
    "stadium":            ("ring",    "#8c8c8c", "#d2d2d2", 1.0),
    "pool":               ("rects",   "#828c78", "#3caadc", 0.6),
    "intersection":       ("grid",    "#6e7864", "#505055", 1.0),
    "roundabout":         ("ring",    "#646e5f", "#55555a", 0.6),
    "overpass":           ("band",    "#828278", "#b4b4aa", 2.0),
    "bridge":             ("band",    "#284b64", "#aaa59b", 1.0),
    "freeway":            ("band",    "#647850", "#78787d", 1.2),
    "road":               ("band",    "#968c6e", "#5a5a5a", 0.6),
    "commercial":         ("rects",   "#8c8782", "#bebec3", 1.5),
    "industrial":         ("rects",   "#969187", "#5a82a0", 1.2),
    "meadow":             ("plain",   "#6e9646", "#82aa5a", 1.0),
    "chaparral":          ("blobs",   "#a08c64", "#5a5f3c", 1.0),
    "wetland":            ("blobs",   "#506446", "#3c505a", 1.0),
    "island":             ("discs",   "#1e466e", "#508246", 0.3),
    "cloud":              ("blobs",   "#c8cdd2", "#f5f5fa", 0.6),
    "terrace":            ("stripes", "#8ca050", "#647837", 1.5),
    "park":               ("blobs",   "#50823c", "#a0a08c", 0.8),
    "power_station":      ("rects",   "#827d73", "#c8c8c8", 0.8),
    "transmission_tower": ("cross",   "#78825a", "#3c3c3c", 1.0),
    "wind_turbine":       ("cross",   "#8c9664", "#e6e6e6", 1.0),
    "solar_panel":        ("stripes", "#323c5a", "#6e82aa", 2.5),
    "church":             ("rects",   "#8c8278", "#aa6450", 0.2),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Look:
    """What every image of one class shares; images add seeded jitter to it."""

    shape: str
    base: tuple[float, float, float]
    accent: tuple[float, float, float]
    density: float  # multiplies the number of shapes / stripe frequency
    size: float  # shape size, as a fraction of the image side
    freq: float  # background texture, cycles per image side
    angle: float  # main orientation, radians


def concept_of(name: str) -> str | None:
    """The canonical concept of a class name, or None when no rule knows it."""
    norm = _normalise(name)
    return next((c for c, pats in _RULES if any(p in norm for p in pats)), None)


def _hash(text: str) -> int:
    return zlib.crc32(text.encode())  # stable across runs and machines, unlike hash()


def _tint(colour: str, tint: np.ndarray) -> tuple[float, float, float]:
    """A '#rrggbb' colour shifted by `tint`, kept inside 0..255."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], float) + tint
    return tuple(float(c) for c in np.clip(rgb, 0, 255))  # type: ignore[return-value]


@functools.cache
def look_of(name: str) -> Look:
    """The look of a class: its concept's look, or one drawn from a hash of its own name."""
    concept = concept_of(name)
    key = concept or name
    rng = np.random.default_rng(_hash(key))  # the details of a look depend on the key only
    size, freq, angle = rng.uniform(0.06, 0.1), rng.uniform(2, 9), rng.uniform(0, np.pi)
    if concept in _LOOKS:
        shape, base, accent, density = _LOOKS[concept]
        # A per-concept tint keeps look-alike concepts (the many greys) apart in colour.
        tint = rng.uniform(-30, 30, 3)
        return Look(shape, _tint(base, tint), _tint(accent, tint), density, size, freq, angle)
    spread = _spread_index(name)
    if spread is not None:
        return _spread_look(spread, size, freq, angle)
    # No concept (MLRSNet-only or odd names): any shape, two colours far apart in hue.
    hue = rng.uniform(0, 1)
    base = _hsv(hue, rng.uniform(0.3, 0.8), rng.uniform(0.35, 0.85))
    hue2 = (hue + rng.uniform(0.25, 0.75)) % 1
    accent = _hsv(hue2, rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.95))
    shape = str(rng.choice([s for s in SHAPES if s != "plain"]))
    return Look(shape, base, accent, float(rng.uniform(0.5, 2.0)), size, freq, angle)


@functools.cache
def _spread_names() -> dict[str, int]:
    return {w: i for i, w in enumerate(catalog.imagenet100_wnids())}


def _spread_index(name: str) -> int | None:
    """Position of an ImageNet-100 wnid: these 100 classes share no concept with any other
    dataset, and looks drawn from a hash would collide (birthday), so they are spread."""
    return _spread_names().get(name)


def _spread_look(index: int, size: float, freq: float, angle: float) -> Look:
    """Look number `index` of a set spread evenly over shapes and hues: consecutive indices
    change shape, and the hues of one shape step by the golden ratio (no two alike)."""
    shapes = [s for s in SHAPES if s != "plain"]
    hue = (index * 0.6180339887) % 1.0
    value = (0.45, 0.65, 0.85)[index % 3]
    base = _hsv(hue, 0.65, value)
    accent = _hsv((hue + 0.5) % 1.0, 0.8, 1.3 - value)
    return Look(shapes[index % len(shapes)], base, accent, 1.0 + 0.5 * (index % 2), size, freq,
                angle)


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    rgb = Image.new("HSV", (1, 1), (int(h * 255), int(s * 255), int(v * 255))).convert("RGB")
    return tuple(float(c) for c in rgb.getpixel((0, 0)))  # type: ignore[union-attr,return-value]


# --- Rendering (vectorised numpy: each loop below is over shapes, never over pixels) --------
def _soft(inside: np.ndarray, px: float) -> np.ndarray:
    """1 inside, 0 outside, a one-pixel ramp at the edge (`inside` = signed distance)."""
    return np.clip(inside / px + 0.5, 0.0, 1.0)


def _rotate(x: np.ndarray, y: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(theta), np.sin(theta)
    return x * c + y * s, -x * s + y * c


def _mask(look: Look, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, theta: float,
          scale: float, px: float) -> np.ndarray:
    """Where the accent colour goes, in [0, 1]; x, y are in units of the image side."""
    xmax, ymax = float(x.max()), float(y.max())
    u, v = _rotate(x, y, theta)
    size = look.size * scale
    m = np.zeros_like(x)

    def centres(n: int) -> list[tuple[float, float]]:
        if n <= 2:  # one or two main objects (island, church, stadium) sit near the centre
            return [(xmax / 2 + rng.uniform(-0.15, 0.15), ymax / 2 + rng.uniform(-0.15, 0.15))
                    for _ in range(max(1, n))]
        return [(rng.uniform(0, xmax), rng.uniform(0, ymax)) for _ in range(n)]

    if look.shape in ("blobs", "discs"):
        n = round((14 if look.shape == "blobs" else 6) * look.density)
        big = 2.5 / np.sqrt(look.density) if look.density < 1 else 1.0  # few shapes -> larger
        for cx, cy in centres(n):
            r = size * big * (rng.uniform(0.5, 1.5) if look.shape == "blobs" else 1.0)
            m = np.maximum(m, _soft(r - np.hypot(x - cx, y - cy), px))
    elif look.shape == "rects":
        big = 2.0 / np.sqrt(look.density) if look.density < 1 else 1.0
        for cx, cy in centres(round(10 * look.density)):
            a, b = size * big * rng.uniform(0.6, 1.2), size * big * rng.uniform(0.4, 0.9)
            cu, cv = _rotate(np.float32(cx), np.float32(cy), theta)
            m = np.maximum(m, _soft(np.minimum(a - np.abs(u - cu), b - np.abs(v - cv)), px))
    elif look.shape == "cross":  # airplanes, towers, turbines: fuselage, wings, tail
        inside = np.full_like(x, -1.0)  # signed distance to the nearest part of any shape
        for cx, cy in centres(round(2 * look.density)):
            ln = 2.2 * size * rng.uniform(0.8, 1.2)
            a, b = _rotate(x - cx, y - cy, theta + rng.uniform(-0.5, 0.5))
            body = np.minimum(ln - np.abs(a), 0.15 * ln - np.abs(b))
            wings = np.minimum(0.8 * ln - np.abs(b), 0.18 * ln - np.abs(a - 0.1 * ln))
            tail = np.minimum(0.35 * ln - np.abs(b), 0.1 * ln - np.abs(a + 0.85 * ln))
            inside = np.maximum.reduce([inside, body, wings, tail])
        m = _soft(inside, px)
    elif look.shape == "stripes":  # fields, terraces, greenhouses, piers
        f = 6 * look.density / scale
        wave = 0.02 * np.sin(2 * np.pi * (look.freq / 3) * u + rng.uniform(0, 2 * np.pi))
        m = np.clip(3 * np.sin(2 * np.pi * f * (v + wave) + rng.uniform(0, 2 * np.pi)), -0.5, 0.5)
        m = m + 0.5
    elif look.shape == "band":  # rivers (wavy), roads, runways, bridges; density>1: crossings
        for k in range(max(1, round(look.density))):
            bu, bv = _rotate(x - xmax / 2, y - ymax / 2, theta + k * rng.uniform(1.0, 2.1))
            wave = 0.05 * np.sin(2 * np.pi * bu * look.freq / 4 + rng.uniform(0, 2 * np.pi))
            width = 1.2 * size * min(look.density, 1.5)
            m = np.maximum(m, _soft(width - np.abs(bv - rng.uniform(-0.2, 0.2) - wave), px))
    elif look.shape == "grid":  # street grids, orchards
        f = 3 * look.density / scale
        du = np.abs((u * f + rng.uniform(0, 1)) % 1 - 0.5) / f
        dv = np.abs((v * f + rng.uniform(0, 1)) % 1 - 0.5) / f
        m = _soft(0.3 * size - np.minimum(du, dv), px)
    elif look.shape == "ring":  # tracks, stadiums, roundabouts
        cx, cy = xmax / 2 + rng.uniform(-0.1, 0.1), ymax / 2 + rng.uniform(-0.1, 0.1)
        r = 3.5 * size * np.sqrt(look.density)
        m = _soft(0.35 * r - np.abs(np.hypot(x - cx, (y - cy) * 1.3) - r), px)
    elif look.shape == "split":  # beaches, coasts: land on one side, water on the other
        bu, bv = _rotate(x - xmax / 2, y - ymax / 2, theta)
        wave = 0.04 * np.sin(2 * np.pi * bu * 1.5 + rng.uniform(0, 2 * np.pi))
        m = _soft(bv - rng.uniform(-0.08, 0.08) - wave, px)
    return m


def render(look: Look, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One RGB image (uint8, height x width x 3): the look plus this image's jitter."""
    side = max(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / side
    theta = look.angle + rng.uniform(-0.25, 0.25)
    scale = rng.uniform(0.8, 1.2)
    tu, _ = _rotate(x, y, theta)
    coarse = rng.standard_normal((5, 5)).astype(np.float32)  # low-frequency shading
    shading = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    texture = 0.08 * np.sin(2 * np.pi * look.freq * tu + rng.uniform(0, 2 * np.pi)) + 0.04 * shading
    img = np.asarray(look.base, np.float32) * (1 + texture)[..., None]
    mask = _mask(look, rng, x, y, theta, scale, 1.0 / side)[..., None]
    img = img * (1 - mask) + np.asarray(look.accent, np.float32) * mask
    img = img * rng.uniform(0.95, 1.05) + rng.uniform(-3, 3, 3)  # brightness, colour cast
    img = img + 5 * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- MLRSNet labels -----------------------------------------------------------------------
def _positives(row: Sequence[str]) -> int:
    return sum(int(v) for v in row[1:])


def build_labels_sample(labels_dir: Path, dest: Path) -> int:
    """Write the packaged labels sample from the real label files; returns the rows kept.

    Per category: the first 60 rows plus up to 20 anomalous rows (more than 13 labels or none),
    in file order, under one copy of the header. gzip without a timestamp: reproducible bytes.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    kept = 0
    for category in catalog.MLRSNET_CATEGORIES:
        with (Path(labels_dir) / f"{category}.csv").open(newline="") as f:
            header, *rows = list(csv.reader(f))
        if tuple(header[1:]) != catalog.MLRSNET_LABELS:
            raise ValueError(f"{category}.csv: header differs from catalog.MLRSNET_LABELS")
        if kept == 0:
            writer.writerow(header)
        odd = [i for i, r in enumerate(rows)
               if _positives(r) > catalog.MLRSNET_MAX_LABELS or _positives(r) == 0]
        head = set(range(min(_SAMPLE_HEAD_ROWS, len(rows))))
        keep = sorted(head | set(odd[:_SAMPLE_MAX_ANOMALIES]))
        writer.writerows(rows[i] for i in keep)
        kept += len(keep)
    Path(dest).write_bytes(gzip.compress(out.getvalue().encode(), mtime=0))  # no name, no time
    return kept


@functools.cache
def labels_sample() -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, ...], ...]]]:
    """(header, rows per category) of the packaged sample of the real MLRSNet label files."""
    data = resources.files("rssc_mlflow.resources").joinpath(LABELS_SAMPLE).read_bytes()
    header, *rows = csv.reader(io.StringIO(gzip.decompress(data).decode()))
    per_cat: dict[str, list[tuple[str, ...]]] = {c: [] for c in catalog.MLRSNET_CATEGORIES}
    for row in rows:
        per_cat[row[0].rsplit("_", 1)[0]].append(tuple(row))
    return tuple(header), {c: tuple(r) for c, r in per_cat.items()}


@functools.cache
def _mlrsnet_rows(category: str, n: int) -> tuple[tuple[str, ...], ...]:
    """n real rows of a category in file order, with an anomalous and a no-label row if any."""
    rows = labels_sample()[1][category]
    many = [i for i, r in enumerate(rows) if _positives(r) > catalog.MLRSNET_MAX_LABELS][:1]
    none = [i for i, r in enumerate(rows) if _positives(r) == 0][:1]
    picked = (many + none)[:n]
    picked += [i for i in range(len(rows)) if i not in picked][: n - len(picked)]
    return tuple(rows[i] for i in sorted(picked))


# --- Trees --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ClassDir:
    name: str  # the class folder's name; picks the look
    rel: Path  # relative to the manual dir
    files: tuple[str, ...]


def imagenet_val_per_class(n: int) -> int:
    """Val images per wnid of a stand-in with `n` train images per wnid (real: 50 of ~1,300):
    fewer than train, so a count that mixes the two parts up shows, and few, so the demo's
    synthetic ImageNet costs little more to write."""
    return max(1, n // 4)


def _write_imagenet_val(root: Path, n: int, size: int, seed: int) -> None:
    wnids = sorted(catalog.imagenet100_wnids() + IMAGENET_EXTRA_WNIDS)
    number = 0
    for wnid in wnids:
        folder = root / IMAGENET_VAL_DIR / wnid
        folder.mkdir(parents=True, exist_ok=True)
        look = look_of(wnid)
        for ii in range(imagenet_val_per_class(n)):
            number += 1
            rng = np.random.default_rng([seed, _hash("imagenet100-val"), _hash(wnid), ii])
            _save(render(look, rng, size, size), folder / f"ILSVRC2012_val_{number:08d}.JPEG",
                  "RGB")


def _plan(tree: str, n: int) -> tuple[str, list[_ClassDir]]:
    """(archive top folder, class folders with file names) of a tree, as the download has them."""
    r = range(1, n + 1)
    if tree == "mlrsnet":
        top = Path("MLRSNet", "Images")
        return "MLRSNet", [_ClassDir(c, top / c, tuple(row[0] for row in _mlrsnet_rows(c, n)))
                           for c in catalog.MLRSNET_CATEGORIES]
    if tree == "rsicb256":
        parent = {c: t for t, cs in catalog.RSICB256_TOP_FOLDERS.items() for c in cs}
        return RSICB256_TOP, [_ClassDir(c, Path(RSICB256_TOP, parent[c], c),
                                        tuple(f"{c}({i}).tif" for i in r))
                              for c in catalog.RSICB256_CLASSES]
    if tree == "imagenet100":
        wnids = catalog.imagenet100_wnids() + IMAGENET_EXTRA_WNIDS
        return "train", [_ClassDir(w, Path("train", w), tuple(f"{w}_{i}.JPEG" for i in r))
                         for w in wnids]
    spec = catalog.get_spec(tree)
    top = Path(spec.archive_root, spec.images_dir)
    name = {"resisc45": lambda c, i: f"{c}_{i:03d}.jpg",  # airplane_001.jpg
            "patternnet": lambda c, i: f"{c}{i:03d}.jpg",  # airplane001.jpg
            "aid": lambda c, i: f"{c.lower()}_{i}.jpg",  # Airport/airport_1.jpg
            "ucm": lambda c, i: f"{c}{i - 1:02d}.tif",  # airplane00.tif
            "whu_rs19": lambda c, i: f"{c.lower()}_{i:02d}.jpg",  # Airport/airport_01.jpg
            "rsscn7": lambda c, i: f"{c[0]}{i:03d}.jpg",  # aGrass/a001.jpg
            "eurosat": lambda c, i: f"{c}_{i}.jpg"}[tree]  # AnnualCrop/AnnualCrop_1.jpg
    return spec.archive_root, [_ClassDir(c, top / c, tuple(name(c, i) for i in r))
                               for c in spec.classes]


# Quirks, (class position, image position) -> how the image is stored. Real copies carry such
# files; a prepare step must decode them all to RGB. Classes 0-3, first image of each.
_QUIRKS_JPEG = {"png_as_jpg_palette": "P", "grayscale": "L", "cmyk": "CMYK",
                "png_as_jpg_rgba": "RGBA"}
_QUIRKS_TIFF = {"palette_tiff": "P", "grayscale": "L", "cmyk": "CMYK", "rgba_tiff": "RGBA"}
_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(56)
_THUMBS_DB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(56)
_APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(58)


def _save(arr: np.ndarray, path: Path, mode: str) -> None:
    img = Image.fromarray(arr)
    tiff = path.suffix == ".tif"
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode == "RGBA":
        img.putalpha(255)
    elif mode != "RGB":
        img = img.convert(mode)
    png = not tiff and mode in ("P", "RGBA")  # JPEG can't hold them: PNG behind a .jpg name
    if tiff or png:
        img.save(path, "TIFF" if tiff else "PNG")  # uncompressed TIFF, like UCM's
    else:
        img.save(path, "JPEG", quality=90)


def _write_tree(out: Path, tree: str, n: int, size: int, seed: int, quirks: bool,
                labels_dirname: str) -> Path:
    root = out / tree
    if root.exists():
        if not (root / SYNTHETIC_MARKER).is_file() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists and was not written by {GENERATOR}; refusing "
                                  "to mix synthetic images into it")
        shutil.rmtree(root)  # an old synthetic tree: start clean so no stale file survives
    top, class_dirs = _plan(tree, n)
    tiff = tree in ("ucm", "rsicb256")
    quirk_modes = list((_QUIRKS_TIFF if tiff else _QUIRKS_JPEG).items()) if quirks else []
    side = max(16, int(size * NATIVE_SIDE[tree] / 256 + 0.5)) if tree in NATIVE_SIDE else size
    odd_sizes = {4: (side, side - 9), 5: (side - 3, side)} if quirks and tree == "ucm" else {}
    record: list[dict[str, str]] = []
    for ci, cd in enumerate(class_dirs):
        (root / cd.rel).mkdir(parents=True, exist_ok=True)
        look = look_of(cd.name)
        for ii, fname in enumerate(cd.files):
            h, w = odd_sizes.get(ci, (side, side)) if ii == 0 else (side, side)
            rng = np.random.default_rng([seed, _hash(tree), _hash(cd.name), ii])
            mode = quirk_modes[ci][1] if ci < len(quirk_modes) and ii == 0 else "RGB"
            _save(render(look, rng, max(h, 8), max(w, 8)), root / cd.rel / fname, mode)
            if mode != "RGB" or (h, w) != (side, side):
                kind = quirk_modes[ci][0] if mode != "RGB" else f"size_{w}x{h}"
                record.append({"kind": kind, "path": (cd.rel / fname).as_posix()})
    if tree == "mlrsnet":
        header, _ = labels_sample()
        labels = root / "MLRSNet" / labels_dirname
        labels.mkdir(parents=True, exist_ok=True)
        for cd in class_dirs:
            rows = [header, *_mlrsnet_rows(cd.name, len(cd.files))]
            text = "".join(",".join(r) + "\r\n" for r in rows)  # CRLF, as the real files
            (labels / f"{cd.name}.csv").write_bytes(text.encode())
        if quirks:
            (labels / ".DS_Store").write_bytes(_DS_STORE)
            record.append({"kind": "junk", "path": f"MLRSNet/{labels_dirname}/.DS_Store"})
    if tree == "imagenet100":
        _write_imagenet_val(root, n, side, seed)
    if quirks:  # junk from unpacking archives made on macOS / browsed on Windows
        first, second = class_dirs[0], class_dirs[1]
        fork = f"._{first.files[0]}"
        junk = {Path(top, ".DS_Store"): _DS_STORE, first.rel / ".DS_Store": _DS_STORE,
                second.rel / "Thumbs.db": _THUMBS_DB, first.rel / fork: _APPLE_DOUBLE,
                Path("__MACOSX") / first.rel / fork: _APPLE_DOUBLE,
                Path("__MACOSX") / top / "._.DS_Store": _APPLE_DOUBLE}
        for rel, data in junk.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            record.append({"kind": "junk", "path": rel.as_posix()})
    marker = {"synthetic": True, "generator": GENERATOR, "seed": seed, "images_per_class": n,
              "image_size": size, "tree": tree, "quirks": record}
    for folder in (root, root / top):
        (folder / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    return root


def write_synthetic(out: Path, keys: Sequence[str] | None = None, images_per_class: int = 10,
                    image_size: int = 64, seed: int = 0, quirks: bool = True,
                    mlrsnet_labels_dirname: str = "labels") -> dict[str, Path]:
    """Write synthetic stand-ins of the datasets of `keys` (catalog keys; None = all) under `out`.

    Returns, per requested key, its manual dir `out/<tree>` (the folder that contains the
    archive's top folder); all MLRSNet keys share `out/mlrsnet`. MLRSNet categories get at most
    as many images as the packaged label sample has rows (60 or more).
    """
    keys = list(catalog.CATALOG) if keys is None else list(keys)
    if images_per_class < 1 or image_size < 16:
        raise ValueError("images_per_class must be >= 1 and image_size >= 16")
    trees = {k: tree_of(k) for k in keys}
    written = {t: _write_tree(Path(out), t, images_per_class, image_size, seed, quirks,
                              mlrsnet_labels_dirname)
               for t in dict.fromkeys(trees.values())}
    return {k: written[t] for k, t in trees.items()}


def write_custom_tree(out: Path, class_folders: Sequence[str], images_per_class: int = 10,
                      image_size: int = 64, seed: int = 0, quirks: bool = True) -> Path:
    """A stand-in for a user's own data: `out/<folder>/<leaf>_NNN.<ext>` for each relative
    folder of `class_folders` (any depth; the leaf folder's name picks the look), marked
    synthetic. With `quirks`, the first image of the first classes is stored as a PNG behind
    a .jpg name, a grey, a CMYK and a palette image, and the second class holds TIFFs of
    another size; junk files sit beside them. Returns `out`, the folder to register."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / SYNTHETIC_MARKER).is_file():
        raise FileExistsError(f"{out} exists and was not written by {GENERATOR}; refusing to "
                              "mix synthetic images into it")
    if images_per_class < 1 or image_size < 16:
        raise ValueError("images_per_class must be >= 1 and image_size >= 16")
    shutil.rmtree(out, ignore_errors=True)
    modes = list(_QUIRKS_JPEG.values()) if quirks else []
    record: list[dict[str, str]] = []
    for ci, folder in enumerate(class_folders):
        rel = Path(folder)
        leaf = rel.name
        tiff = quirks and ci == 1
        (out / rel).mkdir(parents=True, exist_ok=True)
        for ii in range(images_per_class):
            side = image_size - 5 if tiff else image_size
            rng = np.random.default_rng([seed, _hash("custom"), _hash(leaf), ii])
            mode = modes[ci] if ci < len(modes) and ii == 0 else "RGB"
            name = f"{leaf}_{ii + 1:03d}{'.tif' if tiff else '.jpg'}"
            _save(render(look_of(leaf), rng, side, side), out / rel / name, mode)
            if mode != "RGB" or tiff:
                record.append({"kind": f"{mode} {'tiff' if tiff else 'jpg'}",
                               "path": (rel / name).as_posix()})
    if quirks and class_folders:
        first = Path(class_folders[0])
        for rel, data in {first / ".DS_Store": _DS_STORE, first / "._x.jpg": _APPLE_DOUBLE,
                          Path("__MACOSX") / first / "._x.jpg": _APPLE_DOUBLE}.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
            record.append({"kind": "junk", "path": rel.as_posix()})
    marker = {"synthetic": True, "generator": GENERATOR, "seed": seed,
              "images_per_class": images_per_class, "image_size": image_size,
              "tree": "custom", "quirks": record}
    (out / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1, ensure_ascii=False) + "\n")
    return out

