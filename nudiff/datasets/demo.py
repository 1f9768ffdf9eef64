"""A small synthetic H&E dataset with exact instance maps, so the workflow runs with no download.

Each tile is drawn from one of a few tissue styles (dense lymphocytic, epithelial glands,
sparse stroma). Colours follow the Beer-Lambert stain model used for H&E colour
deconvolution (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 2001): optical density is a
sum of per-stain concentration maps times a stain vector, and RGB = 255 * exp(-OD).
Nuclei are perturbed ellipses; where two overlap, each pixel goes to the nucleus whose
boundary is relatively farthest away, so touching nuclei meet along a shared edge and the
instance map is the exact pixel set of what was drawn.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from skimage.measure import label as label_components
from skimage.segmentation import relabel_sequential

from nudiff.io.atomic import atomic_path

logger = logging.getLogger(__name__)

Style = Literal["lymphocytic", "epithelial", "stromal"]
STYLES: tuple[str, ...] = get_args(Style)

# Optical-density vectors (R, G, B). Haematoxylin is Ruifrok & Johnston's; their eosin
# absorbs almost no blue and renders magenta, so ours takes more blue, as scanned slides do.
_H_VECTOR = np.array([0.650, 0.704, 0.286])
_E_VECTOR = np.array([0.100, 0.880, 0.400])
_REFERENCE_SIZE = 256  # nuclei counts below are per tile of this side
_MIN_SEPARATION = 0.85  # centre distance / summed radii: < 1 makes neighbours touch
_GLAND_SPACING = 11.0  # px of gland ring per nucleus
_MIN_AREA = 6  # px; smaller pieces are nuclei cut by the tile border


@dataclass(frozen=True)
class _StyleParams:
    count: tuple[float, float]  # nuclei per 256x256 tile
    radius: tuple[float, float]  # geometric-mean radius sqrt(a * b), px
    aspect: tuple[float, float]  # major / minor axis
    p_touch: float  # chance a new nucleus is placed against an existing one
    spread: float  # fraction of the tile where free (non-touching) nuclei are dropped
    h_nucleus: tuple[float, float]  # haematoxylin concentration in nuclei
    vesicular: float  # pallor of the nucleus centre (0 = solid, 1 = hollow)
    rim: float  # extra stain at the nuclear membrane
    speckle: float  # chromatin texture amplitude
    e_background: tuple[float, float]  # eosin concentration of the stroma
    h_background: float  # haematoxylin haze outside nuclei
    fibres: float  # strength of the collagen-fibre pattern
    glands: tuple[int, int]  # rings of nuclei around a lumen
    e_tint: tuple[float, float, float]  # added to the eosin vector: per-style hue


_PARAMS: dict[str, _StyleParams] = {
    "lymphocytic": _StyleParams(
        count=(125, 150),
        radius=(3.4, 4.6),
        aspect=(1.0, 1.25),
        p_touch=0.3,
        spread=0.3,
        h_nucleus=(1.3, 1.7),
        vesicular=0.0,
        rim=0.15,
        speckle=0.12,
        e_background=(0.38, 0.48),
        h_background=0.05,
        fibres=0.04,
        glands=(0, 0),
        e_tint=(0.02, -0.04, 0.08),
    ),
    "epithelial": _StyleParams(
        count=(45, 70),
        radius=(6.0, 8.5),
        aspect=(1.1, 1.6),
        p_touch=0.75,
        spread=1.0,
        h_nucleus=(0.65, 0.85),
        vesicular=0.45,
        rim=0.5,
        speckle=0.30,
        e_background=(0.5, 0.62),
        h_background=0.10,
        fibres=0.06,
        glands=(1, 3),
        e_tint=(0.03, 0.0, 0.05),
    ),
    "stromal": _StyleParams(
        count=(40, 55),
        radius=(4.0, 5.0),
        aspect=(2.5, 4.0),
        p_touch=0.2,
        spread=1.0,
        h_nucleus=(0.95, 1.2),
        vesicular=0.1,
        rim=0.2,
        speckle=0.2,
        e_background=(0.6, 0.8),
        h_background=0.03,
        fibres=0.35,
        glands=(0, 0),
        e_tint=(0.0, 0.04, -0.05),
    ),
}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean, unit std; shape ``shape``.

    Wide fields are filtered on a coarse grid and upsampled: a Gaussian with sigma 40 on
    the full grid costs far more and looks the same.
    """
    step = max(1, int(sigma // 4))  # >= 4 coarse cells per sigma: bilinear upsampling is smooth
    coarse = tuple(-(-n // step) + (step > 1) for n in shape)
    field = ndi.gaussian_filter(rng.standard_normal(coarse), sigma / step, mode="wrap")
    if step > 1:
        field = ndi.zoom(field, step, order=1, mode="grid-wrap")[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-12)


def _ellipse_radius(a, b, phi, theta):
    """Distance from an ellipse's centre to its edge in direction ``theta`` (broadcasts)."""
    t = theta - phi
    return a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)


def _place_nuclei(
    rng: np.random.Generator, size: int, p: _StyleParams, fibre_angle: float
) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """Choose nuclei as rows (cy, cx, a, b, phi) and gland (cy, cx, ring radius) triples.

    A proposal is kept when its centre is at least ``_MIN_SEPARATION`` times the summed
    ellipse radii from every other centre: nuclei touch (:func:`_rasterise` splits the
    overlap exactly) but never swallow one another.
    """
    target = max(1, round(rng.uniform(*p.count) * (size / _REFERENCE_SIZE) ** 2))
    rows: list[tuple[float, float, float, float, float]] = []
    proposals: list[tuple[float, float, float]] = []  # (cy, cx, phi) candidates, glands first
    glands = []
    for _ in range(rng.integers(p.glands[0], p.glands[1] + 1)):
        ring = min(rng.uniform(22, 36), 0.4 * size)
        gy, gx = rng.uniform(ring, size - ring, 2)
        if any(np.hypot(gy - y, gx - x) < ring + r + 12 for y, x, r in glands):
            continue
        glands.append((gy, gx, ring))
        # epithelial nuclei stand with their long axis across the gland wall
        angles = np.arange(int(2 * np.pi * ring / _GLAND_SPACING)) * _GLAND_SPACING / ring
        proposals += [(gy + ring * np.sin(t), gx + ring * np.cos(t), t) for t in angles]

    # free nuclei fall where a smooth random field is in its top ``spread`` fraction
    field = _smooth_noise(rng, (size, size), 30)
    free = np.argwhere(field >= np.quantile(field, 1 - p.spread))

    def fits(cy, cx, a, b, phi) -> bool:
        if not rows:
            return True
        arr = np.asarray(rows)
        dy, dx = arr[:, 0] - cy, arr[:, 1] - cx
        theta = np.arctan2(dy, dx)
        reach = _ellipse_radius(a, b, phi, theta) + _ellipse_radius(arr[:, 2], arr[:, 3], arr[:, 4], theta + np.pi)
        return bool(np.all(np.hypot(dy, dx) >= _MIN_SEPARATION * reach))

    for attempt in range(40 * target):
        if len(rows) >= target:
            break
        r = rng.uniform(*p.radius)
        aspect = rng.uniform(*p.aspect)
        a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
        phi = (fibre_angle + rng.normal(0, 0.2)) if p.fibres > 0.3 else rng.uniform(0, np.pi)
        if attempt < len(proposals):
            cy, cx, phi = proposals[attempt]
        elif rows and rng.random() < p.p_touch:
            y0, x0, a0, b0, phi0 = rows[rng.integers(len(rows))]
            theta = rng.uniform(0, 2 * np.pi)
            d = _ellipse_radius(a0, b0, phi0, theta) + _ellipse_radius(a, b, phi, theta + np.pi)
            d *= rng.uniform(0.88, 0.97)
            cy, cx = y0 + d * np.sin(theta), x0 + d * np.cos(theta)
        elif rng.random() < 0.85:  # most free nuclei land in the dense zone, a few anywhere
            cy, cx = free[rng.integers(len(free))] + rng.uniform(0, 1, 2)
        else:
            cy, cx = rng.uniform(0, size, 2)
        if -r < cy < size + r and -r < cx < size + r and fits(cy, cx, a, b, phi):
            rows.append((cy, cx, a, b, phi))
    return np.asarray(rows, dtype=float).reshape(-1, 5), glands


def _rasterise(
    rng: np.random.Generator, size: int, nuclei: np.ndarray, irregularity: float = 0.06
) -> tuple[np.ndarray, np.ndarray]:
    """Instance map ``(size, size)`` int32 and normalised radius ``rho`` (0 centre, 1 edge).

    Each nucleus is an ellipse whose radius is perturbed by harmonics 2-4 of the angle;
    a pixel inside several nuclei goes to the one where it has the smallest ``rho``.
    """
    inst = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf)
    harmonics = np.arange(2, 5)[:, None, None]
    for k, (cy, cx, a, b, phi) in enumerate(nuclei, start=1):
        amp = rng.uniform(0, irregularity, 3)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, 3)[:, None, None]
        reach = a * (1 + amp.sum()) + 1
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1)[:, None] - cy
        dx = np.arange(x0, x1)[None, :] - cx
        theta = np.arctan2(dy, dx)
        edge = _ellipse_radius(a, b, phi, theta) * (1 + (amp * np.cos(harmonics * (theta - phi) + phase)).sum(0))
        rho = np.hypot(dy, dx) / edge
        window = best[y0:y1, x0:x1]
        win = (rho < 1) & (rho < window)
        window[win] = rho[win]
        inst[y0:y1, x0:x1][win] = k
    # Keep the largest connected piece of each nucleus and drop slivers cut by the border.
    pieces = label_components(inst, background=0, connectivity=1)
    piece_size = np.bincount(pieces.ravel())
    owner = np.zeros(piece_size.size, np.int64)
    owner[pieces.ravel()] = inst.ravel()
    order = np.lexsort((-piece_size[1:], owner[1:])) + 1  # by owner, largest piece first
    first = np.r_[True, owner[order][1:] != owner[order][:-1]]
    keep = np.zeros(piece_size.size, bool)
    keep[order[first & (piece_size[order] >= _MIN_AREA)]] = True
    inst[~keep[pieces]] = 0
    best[inst == 0] = 1.0
    return inst, best


def _stroma(
    rng: np.random.Generator, size: int, p: _StyleParams, fibre_angle: float, glands: list[tuple[float, float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Eosin and haematoxylin concentration maps ``(size, size)`` of the tissue around nuclei.

    Collagen fibres are white noise smeared by a long, thin Gaussian and read along
    ``fibre_angle`` through a wandering coordinate, so they are wavy and wispy rather than
    periodic; blotches and pale gaps come from smooth noise at a few scales. Each gland
    gets a pale lumen inside a ring of denser cytoplasm.
    """
    shape = (size, size)
    # fibre coordinates: ``along`` follows fibre_angle, ``across`` wanders so fibres wave
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    along = xx * np.cos(fibre_angle) + yy * np.sin(fibre_angle)
    across = -xx * np.sin(fibre_angle) + yy * np.cos(fibre_angle) + 5 * _smooth_noise(rng, shape, 20)
    canvas = ndi.gaussian_filter(rng.standard_normal((2 * size, 2 * size)), (0.8, 6), mode="wrap")
    streaks = ndi.map_coordinates(canvas, [across, along], order=1, mode="grid-wrap")
    fibres = np.clip(streaks / streaks.std(), 0, None) ** 1.5
    fibres *= np.clip(0.7 + 0.5 * _smooth_noise(rng, shape, 12), 0, None)
    gaps = np.clip(_smooth_noise(rng, shape, 6) - 0.8, 0, None)  # loose, pale stroma
    texture = (
        1
        + 0.15 * _smooth_noise(rng, shape, 16)
        + 0.08 * _smooth_noise(rng, shape, 2.5)
        + p.fibres * (fibres - fibres.mean())
        - p.fibres * gaps
    )
    eosin = rng.uniform(*p.e_background) * np.clip(texture, 0.15, None)
    haem = p.h_background * np.clip(1 + 0.5 * _smooth_noise(rng, shape, 8), 0, None)
    for gy, gx, ring in glands:
        dist = np.hypot(yy - gy, xx - gx)
        cytoplasm = np.exp(-(((dist - ring) / 10) ** 2))
        lumen = 1 / (1 + np.exp((dist - ring + 10) / 1.5))
        eosin = eosin * (1 + 0.4 * cytoplasm) * (1 - 0.8 * lumen)
        haem = haem + 0.1 * cytoplasm
    return eosin, haem


def _nuclear_haematoxylin(
    rng: np.random.Generator, p: _StyleParams, inst: np.ndarray, rho: np.ndarray, nuclei: np.ndarray
) -> np.ndarray:
    """Haematoxylin in nuclei ``(H, W)``: per-nucleus level, pale vesicular centre, dark
    rim, chromatin speckle and (vesicular styles) a nucleolus near each centre."""
    level = np.r_[0.0, rng.uniform(*p.h_nucleus, int(inst.max()))]
    profile = 1 - p.vesicular * (1 - rho**2) + p.rim * np.clip((rho - 0.65) / 0.35, 0, 1) ** 2
    chromatin = 1 + p.speckle * (0.6 * _smooth_noise(rng, inst.shape, 0.7) + 0.6 * _smooth_noise(rng, inst.shape, 1.8))
    haem = np.where(inst > 0, level[inst] * profile * chromatin.clip(0.2, None), 0.0)
    if p.vesicular > 0.3 and len(nuclei):
        cy, cx = np.round(nuclei[:, :2].T).astype(int).clip(0, inst.shape[0] - 1)
        dots = np.zeros(inst.shape)
        dots[cy, cx] = inst[cy, cx] > 0
        haem = haem + 4.0 * ndi.gaussian_filter(dots, 0.9)
    return haem


def generate_demo_tile(rng: np.random.Generator, size: int, style: Style) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic H&E tile and its exact instance map.

    Args:
        rng: source of every random choice.
        size: tile side in pixels (>= 64). Nuclei keep their size in pixels (one
            magnification); their number scales with the tile area.
        style: tissue style, one of :data:`STYLES`.

    Returns:
        ``rgb`` ``(size, size, 3)`` uint8 and ``inst`` ``(size, size)`` int32 with
        0 = background and nuclei labelled 1..n (every id present).
    """
    if style not in _PARAMS:
        raise ValueError(f"style={style!r} is not one of {STYLES}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 64:
        raise ValueError(f"size={size!r} must be an integer >= 64")
    size, p, shape = int(size), _PARAMS[style], (int(size), int(size))
    fibre_angle = rng.uniform(0, np.pi)
    nuclei, glands = _place_nuclei(rng, size, p, fibre_angle)
    inst, rho = _rasterise(rng, size, nuclei)

    eosin, haem = _stroma(rng, size, p, fibre_angle, glands)
    haem = haem + _nuclear_haematoxylin(rng, p, inst, rho, nuclei)
    eosin = np.where(inst > 0, 0.35 * eosin, eosin)  # nuclei hold little eosin

    # Optics: slight blur (antialiasing and focus), uneven illumination, sensor noise.
    od = (
        ndi.gaussian_filter(haem, 0.6)[..., None] * _H_VECTOR
        + ndi.gaussian_filter(eosin, 0.6)[..., None] * (_E_VECTOR + np.asarray(p.e_tint))
        + 0.03
    )
    light = 1 + 0.04 * _smooth_noise(rng, shape, 40)[..., None]
    rgb = 255.0 * np.exp(-od) * light + rng.normal(0, 2.5, (*shape, 3))
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return rgb, relabel_sequential(inst)[0].astype(np.int32)


def make_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    n_train: int = 8,
    n_test: int = 4,
    image_size: int = 256,
    styles: tuple[Style, ...] = STYLES,  # type: ignore[assignment]
) -> pd.DataFrame:
    """Write a synthetic H&E dataset in the "folder" layout and return its index.

    Layout: ``out_dir/{train,test}/images/<name>.png`` (RGB uint8, ``(H, W, 3)``),
    ``out_dir/{train,test}/labels/<name>.tif`` (int32 instance map ``(H, W)``, 0 =
    background, 1..n) and ``out_dir/styles.csv`` (one row per tile). Styles are dealt in
    turn, so each split holds every style when it has enough tiles; the style is also in
    the name (``<split>_<index>_<style>``). ``out_dir`` is built whole in a temporary
    folder and replaces any existing one only on success.

    Tile ``i`` of a split draws from ``SeedSequence([seed, split, i])``, so it does not
    change when the other split grows; same arguments give byte-identical files.

    Returns:
        DataFrame with columns ``split, name, style, n_nuclei, image, label`` (final paths).
    """
    for key, value, low in (
        ("n_train", n_train, 0),
        ("n_test", n_test, 0),
        ("seed", seed, 0),
        ("image_size", image_size, 64),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key}={value!r} must be an integer >= {low}")
    if not styles or any(s not in _PARAMS for s in styles):
        raise ValueError(f"styles={styles!r} must be a non-empty subset of {STYLES}")
    if n_train + n_test == 0:
        raise ValueError("n_train + n_test is 0: nothing to generate")
    out_dir = Path(out_dir)
    rows = []
    with atomic_path(out_dir, directory=True) as tmp:
        for split_index, (split, count) in enumerate((("train", n_train), ("test", n_test))):
            for i in range(count):
                style = styles[i % len(styles)]
                rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, i]))
                rgb, inst = generate_demo_tile(rng, image_size, style)
                name = f"{split}_{i:03d}_{style}"
                with atomic_path(tmp / split / "images" / f"{name}.png") as png:
                    Image.fromarray(rgb).save(png, format="PNG")
                with atomic_path(tmp / split / "labels" / f"{name}.tif") as tif:
                    tifffile.imwrite(tif, inst, compression="zlib")
                rows.append(
                    {
                        "split": split,
                        "name": name,
                        "style": style,
                        "n_nuclei": int(inst.max()),
                        "image": str(out_dir / split / "images" / f"{name}.png"),
                        "label": str(out_dir / split / "labels" / f"{name}.tif"),
                    }
                )
        table = pd.DataFrame(rows)
        with atomic_path(tmp / "styles.csv") as csv_tmp:
            table[["split", "name", "style", "n_nuclei"]].to_csv(csv_tmp, index=False)
    logger.info("wrote %d demo tiles (%d nuclei) to %s", len(table), table["n_nuclei"].sum(), out_dir)
    return table
