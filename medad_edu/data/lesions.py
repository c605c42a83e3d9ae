"""Synthetic lesions drawn into grey images of the five tasks, plus the seeding helpers they share.

Explained in the book in chapter "The data" (notebooks/01_data.ipynb), section "Making abnormal images".

Both the procedural phantoms (:mod:`medad_edu.data.phantoms`) and the real-anatomy set
(:mod:`medad_edu.data.real_anatomy`) call :func:`apply_lesions`. It looks only at the images themselves:
where the lungs, the brain or the retina lie is estimated from the pixels with thresholds and morphology,
never taken from the generator. So the same code also puts lesions into real images, and an abnormal
image is exactly its normal source plus a local change.

The contract every lesion keeps (the tests check it):

- the image changes only inside the mask dilated by :func:`margin_px` pixels (soft edges, a short posterior
  acoustic shadow in ultrasound);
- every mask has at least one positive pixel and lies inside the anatomy (lung, brain, retina, breast);
- ``severity`` in [0, 1] sets the contrast (and a little of the size): 0 is barely visible, 1 is obvious.
  With the same seed and image, changing ``severity`` keeps the lesion's place and shape, so a notebook can
  sweep it.

Geometry is written in normalised coordinates (the image spans [-1, 1] in both axes), so a lesion looks the
same at 32 and at 512 pixels. For speed, the anatomy is estimated for the whole batch at once (one scipy
call per stack) at an analysis resolution of at most ~128 pixels, and each lesion is drawn only inside a
window around it.

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

TASK_CODES: dict[str, int] = {"chest_xray": 11, "brain_mri": 23, "fundus": 37, "breast_us": 41, "head_ct": 53}

# Streams of random numbers, so normals, the normal bases of abnormals and the lesions never share draws.
STREAM_NORMAL, STREAM_ABNORMAL_BASE, STREAM_LESION = 0, 1, 2

# Changes reach at most this fraction of the image side beyond the mask (soft edge, ultrasound shadow).
MARGIN_FRAC = 0.08


def margin_px(size: int) -> int:
    """How many pixels beyond its mask a lesion may change the image, for an image of side ``size``."""
    return int(np.ceil(MARGIN_FRAC * size)) + 1


def image_seeds(task_code: int, stream: int, seed: int, n: int) -> list[np.random.SeedSequence]:
    """One independent SeedSequence per image: image i is the same whatever n is (prefix-stable)."""
    return np.random.SeedSequence([int(task_code), int(stream), int(seed)]).spawn(n)


def check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` as an int if it is a whole number in ``[lo, hi]`` (no upper bound if ``hi`` is None)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


# ------------------------------------------------------------------------- the generators' public API

# Image sides the generators render (phantoms and real anatomy).
MIN_SIZE, MAX_SIZE = 32, 512

# ``generate(task, n, size, seed, stream)``: n normal images [n, size, size] float32 in [0, 1].
Generate = Callable[[str, int, int, int, int], np.ndarray]


def lesioned(task: str, task_code: int, images, seed, severity) -> tuple[np.ndarray, np.ndarray]:
    """``add_lesions`` of a generator whose images are seeded with ``task_code``."""
    seed = check_seed(seed)
    arr, _ = check_images(images)
    return apply_lesions(task, images, image_seeds(task_code, STREAM_LESION, seed, arr.shape[0]), severity)


def normal_images(generate: Generate, task: str, n, size, seed) -> np.ndarray:
    """``make_normal`` of a generator: arguments checked, then ``n`` normal images."""
    n = check_int("n", n, 0)
    size = check_int("size", size, MIN_SIZE, MAX_SIZE)
    seed = check_seed(seed)
    return generate(task, n, size, seed, STREAM_NORMAL)


def labelled_split(generate: Generate, task: str, task_code: int, n_normal, n_abnormal, size,
                   seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_split`` of a generator: normals first, then abnormals made from their own normal images (a separate
    seed stream, so they are not lesioned copies of the normals) plus a lesion."""
    n_normal = check_int("n_normal", n_normal, 0)
    n_abnormal = check_int("n_abnormal", n_abnormal, 0)
    size = check_int("size", size, MIN_SIZE, MAX_SIZE)
    seed = check_seed(seed)
    normal = generate(task, n_normal, size, seed, STREAM_NORMAL)
    base = generate(task, n_abnormal, size, seed, STREAM_ABNORMAL_BASE)
    abn, masks = lesioned(task, task_code, base, seed, None)
    images = np.concatenate([normal, abn]).astype(np.float32, copy=False)
    labels = np.concatenate([np.zeros(n_normal, np.int64), np.ones(n_abnormal, np.int64)])
    all_masks = np.concatenate([np.zeros(normal.shape, np.uint8), masks])
    return images, labels, all_masks


# --------------------------------------------------------------------------------------------- geometry


def grid(size: int) -> np.ndarray:
    """Pixel centres in normalised coordinates, (-1, 1)."""
    return ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)


_INTERP_CACHE: dict[tuple[int, int], np.ndarray] = {}


def interp_matrix(size: int, cells: int) -> np.ndarray:
    """[size, cells] Gaussian-kernel weights from a coarse lattice to pixel centres (normalised coordinates).

    Separable and size-independent: the same lattice values give the same field at any resolution. Rows
    have unit L2 norm so that A @ W @ A.T has unit variance everywhere when W is white noise.
    """
    key = (size, cells)
    if key not in _INTERP_CACHE:
        x = grid(size).astype(np.float64)
        g = np.linspace(-1.15, 1.15, cells)
        h = 0.75 * (g[1] - g[0])
        A = np.exp(-0.5 * ((x[:, None] - g[None, :]) / h) ** 2)
        A /= np.sqrt((A ** 2).sum(1, keepdims=True))
        _INTERP_CACHE[key] = A.astype(np.float32)
    return _INTERP_CACHE[key]


def smooth_noise_single(size: int, cells: int, rng: np.random.Generator, ys=slice(None),
                        xs=slice(None)) -> np.ndarray:
    """Unit-variance smooth random field on a ``cells`` x ``cells`` lattice, sampled at ``size`` pixels
    (optionally only on the window ``ys`` x ``xs``)."""
    A = interp_matrix(size, cells)
    w = rng.standard_normal((cells, cells)).astype(np.float32)
    return A[ys] @ w @ A[xs].T


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


_FAR = np.float32(10.0)


def blob(size: int, cy: float, cx: float, ry: float, rx: float, theta: float, rng: np.random.Generator,
         lobes: float = 0.15, spikes: int = 0, spike_len: float = 0.0, roughness: float = 0.0,
         reach: float = 2.0) -> np.ndarray:
    """Normalised radius map of an irregular blob: 1 on its boundary, < 1 inside, large far away.

    The boundary radius is modulated by random low angular harmonics (lobulation), optional narrow spikes
    (spiculated margins) and an optional smooth random field (ragged outline). It is evaluated only in a
    window that holds everything up to ``reach`` times the largest possible radius; the random draws do not
    depend on the window, so the shape is the same at any image size.
    """
    harm = [(lobes / k * rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]
    if spikes > 0:
        centres = rng.uniform(-np.pi, np.pi, spikes)
        lengths = spike_len * rng.uniform(0.4, 1.0, spikes)
        widths = rng.uniform(0.08, 0.18, spikes)
    W = rng.standard_normal((9, 9)).astype(np.float32) if roughness > 0 else None
    mod_max = 1 + sum(abs(a) for a, _ in harm) + (spike_len if spikes > 0 else 0) + 2.5 * roughness
    half = max(rx, ry) * mod_max * reach + 4.0 / size
    x = grid(size)
    lo_y, hi_y = np.searchsorted(x, [cy - half, cy + half])
    lo_x, hi_x = np.searchsorted(x, [cx - half, cx + half])
    out = np.full((size, size), _FAR, np.float32)
    if hi_y <= lo_y or hi_x <= lo_x:
        return out
    ys, xs = slice(lo_y, hi_y), slice(lo_x, hi_x)
    dx = x[None, xs] - np.float32(cx)
    dy = x[ys, None] - np.float32(cy)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    a = (c * dx + s * dy) * np.float32(1 / rx)
    b = (-s * dx + c * dy) * np.float32(1 / ry)
    rho = np.sqrt(a * a + b * b) + np.float32(1e-6)
    # cos(k phi), sin(k phi) by the Chebyshev recurrence: no arctan2 and no trig per pixel.
    c1, s1 = a / rho, b / rho
    mod = np.ones_like(rho)
    ck, sk = c1 * c1 - s1 * s1, 2 * c1 * s1  # k = 2
    for amp, ph in harm:
        mod += np.float32(amp * np.cos(ph)) * ck - np.float32(amp * np.sin(ph)) * sk
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
    if spikes > 0:
        for c0, ln, w in zip(centres, lengths, widths):
            # Narrow bump in angle around c0: 1 - cos(d) ~ d^2 / 2, so this is ~exp(-d^2 / 2w^2).
            one_minus_cos = 1 - (c1 * np.float32(np.cos(c0)) + s1 * np.float32(np.sin(c0)))
            t = np.clip(1 - one_minus_cos * np.float32(1 / (3.125 * w * w)), 0, 1)
            mod += np.float32(ln) * t * t
    if W is not None:
        A = interp_matrix(size, 9)
        mod += np.float32(roughness) * (A[ys] @ W @ A[xs].T)
    out[ys, xs] = rho / np.maximum(mod, np.float32(0.3))
    return out


def soft_inside(rho: np.ndarray, soft: float) -> np.ndarray:
    """1 well inside (rho < 1 - soft), 0 beyond rho = 1 + soft, 0.5 on the boundary."""
    return _smoothstep((1.0 + soft - rho) / (2.0 * soft)).astype(np.float32)


def _min_r(S: int) -> float:
    """Smallest lesion radius in normalised units: 1.3 pixels, so a mask is never empty or a lone pixel."""
    return 2.6 / S


def _to_norm(iy, ix, S: int) -> tuple[float, float]:
    return (float(iy) + 0.5) * 2.0 / S - 1.0, (float(ix) + 0.5) * 2.0 / S - 1.0


def _pick(allowed: np.ndarray, rng: np.random.Generator, *fallbacks: np.ndarray) -> tuple[int, int]:
    """A random pixel of ``allowed`` (else of the first non-empty fallback, else the centre)."""
    for cand in (allowed,) + fallbacks:
        idx = np.flatnonzero(cand)
        if idx.size:
            k = int(idx[rng.integers(idx.size)])
            return divmod(k, cand.shape[1])
    rng.integers(1)  # keep the number of draws the same
    return allowed.shape[0] // 2, allowed.shape[1] // 2


# ------------------------------------------------------------------- anatomy from the pixels, batched

_S2 = np.zeros((3, 3, 3), bool)
_S2[1] = ndi.generate_binary_structure(2, 1)  # in-plane 4-connectivity: every image of a stack on its own


def _bgauss(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(x, (0, sigma, sigma), mode="nearest")


def _bedt(mask: np.ndarray) -> np.ndarray:
    """Per-image Euclidean distance to the background (a loop: scipy's 3-D transform is slower here)."""
    out = np.empty(mask.shape, np.float32)
    for i, m in enumerate(mask):
        out[i] = ndi.distance_transform_edt(m)
    return out


def _blargest(mask: np.ndarray) -> np.ndarray:
    """Largest connected piece of each image (labels of a stack are numbered image by image)."""
    n = mask.shape[0]
    lab, nl = ndi.label(mask, structure=_S2)
    if nl == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    hi = lab.reshape(n, -1).max(1)
    lo = np.concatenate([[0], np.maximum.accumulate(hi)[:-1]])
    best = np.full(n, -1)
    for i in np.flatnonzero(hi > lo):
        best[i] = lo[i] + 1 + int(np.argmax(sizes[lo[i] + 1:hi[i] + 1]))
    return lab == best[:, None, None]


def _dil4(m: np.ndarray, it: int = 1) -> np.ndarray:
    """Binary dilation of every image of a stack by a 4-neighbour cross, ``it`` times (array slicing)."""
    for _ in range(it):
        o = m.copy()
        o[:, 1:] |= m[:, :-1]
        o[:, :-1] |= m[:, 1:]
        o[:, :, 1:] |= m[:, :, :-1]
        o[:, :, :-1] |= m[:, :, 1:]
        m = o
    return m


def _ero4(m: np.ndarray, it: int = 1) -> np.ndarray:
    return ~_dil4(~m, it)


def _bfill(mask: np.ndarray) -> np.ndarray:
    """Fill holes of every image: background pieces that do not touch the image border become foreground."""
    lab, nl = ndi.label(~mask, structure=_S2)
    outside = np.zeros(nl + 1, bool)
    for edge in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        outside[edge] = True
    outside[0] = True
    return mask | ~outside[lab]


def _bbody(x: np.ndarray, frac: float, dark_border: bool = True) -> np.ndarray:
    """Foreground (patient) of each image: smooth, threshold, keep the largest piece, fill holes.

    The threshold is ``frac`` of the image maximum, raised above the noise of the background when the
    image border is background (MRI magnitude noise lifts it well above zero).
    """
    n, A, _ = x.shape
    sm = _bgauss(x, 0.015 * A)
    thr = frac * np.maximum(x.reshape(n, -1).max(1), 1e-3)
    if dark_border:
        k = max(2, A // 32)
        border = np.concatenate([sm[:, :k].reshape(n, -1), sm[:, -k:].reshape(n, -1),
                                 sm[:, :, :k].reshape(n, -1), sm[:, :, -k:].reshape(n, -1)], 1)
        med = np.median(border, 1)
        mad = np.median(np.abs(border - med[:, None]), 1)
        thr = np.maximum(thr, med + 6 * 1.4826 * mad + 0.02)
    return _bfill(_blargest(sm > thr[:, None, None]))


def _bmedian(x: np.ndarray, mask: np.ndarray, default: float) -> np.ndarray:
    out = np.full(len(x), default, np.float32)
    for i in range(len(x)):
        v = x[i][mask[i]]
        if v.size:
            out[i] = np.median(v)
    return out


def _otsu(v: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of a set of values (maximises the between-class variance)."""
    h, edges = np.histogram(v, bins=bins)
    c = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(h)
    w1 = w0[-1] - w0
    m0 = np.cumsum(h * c) / np.maximum(w0, 1)
    m1 = ((h * c).sum() - np.cumsum(h * c)) / np.maximum(w1, 1)
    return float(c[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _eq_radius(mask: np.ndarray, default: float) -> np.ndarray:
    area = mask.reshape(len(mask), -1).sum(1)
    return np.where(area > 0, np.sqrt(area / np.pi), default).astype(np.float32)


def _region_chest(x):
    n, A, _ = x.shape
    g = grid(A)
    sm = _bgauss(x, 0.02 * A)
    body = _bbody(x, 0.12, dark_border=False)
    # Prior zones where lungs lie on a PA film; inside them the lungs are the darker half of the body.
    zone = np.zeros((A, A), bool)
    for side in (-1, 1):
        zone |= ((g[None, :] - side * 0.42) / 0.3) ** 2 + ((g[:, None] + 0.05) / 0.6) ** 2 < 1
    zb = zone & body
    # Otsu threshold inside the zones: air-filled lung versus mediastinum, ribs, diaphragm and soft tissue.
    thr = np.array([_otsu(sm[i][zb[i]]) if zb[i].any() else float(np.median(sm[i])) for i in range(n)])
    lung = _dil4(_ero4(zb & (sm < thr[:, None, None])))  # opening: drop thin bridges and specks
    small = lung.reshape(n, -1).sum(1) < 0.01 * A * A
    lung[small] = zone
    return {"lung": lung, "dist": _bedt(lung)}


def _region_head(x):
    """Head mask, distance to its edge and equivalent radius (MRI); plus skull and brain for CT."""
    n, A, _ = x.shape
    head = _bbody(x, 0.08)
    dist = _bedt(head)
    R = _eq_radius(head, A / 3)
    interior = dist > 0.17 * R[:, None, None]
    keep = _bgauss(interior.astype(np.float32), 0.6)  # soft brain mask: lesions never cover the skull
    # Level of the brightest normal tissue, from a lightly smoothed image (robust to noise).
    ref = np.where(interior, _bgauss(x, 1.0), 0).reshape(n, -1).max(1)
    ref = np.where(ref > 0, ref, x.reshape(n, -1).max(1))
    return {"head": head, "dist": dist, "R": R, "interior": interior, "keep": keep, "ref": ref}


def _region_ct(x):
    n, A, _ = x.shape
    head = _bbody(x, 0.15)
    dist = _bedt(head)
    R = _eq_radius(head, A / 3)
    sm = _bgauss(x, 0.01 * A)
    top = np.where(head, sm, 0).reshape(n, -1).max(1)
    # Skull = the brightest ring; the brain is what lies well inside it.
    bone = sm > np.maximum(0.85 * top, 0.5)[:, None, None]
    near_bone = _dil4(bone, max(1, A // 64))
    brain = head & ~near_bone & (dist > 0.08 * R[:, None, None])
    brain = _bfill(_blargest(brain)) & ~bone
    empty = ~brain.reshape(n, -1).any(1)
    if empty.any():
        brain[empty] = dist[empty] > 0.15 * R[empty, None, None]
    din = _bedt(brain)
    yy, xx = np.mgrid[0:A, 0:A]
    cnt = np.maximum(brain.reshape(n, -1).sum(1), 1)
    com = np.stack([(brain * yy).reshape(n, -1).sum(1) / cnt, (brain * xx).reshape(n, -1).sum(1) / cnt], 1)
    return {"brain": brain, "din": din, "R": R, "com": com, "level": _bmedian(x, brain, 0.45)}


def _region_fundus(x):
    n, A, _ = x.shape
    fov = _bbody(x, 0.06)
    dfov = _bedt(fov)
    Rf = _eq_radius(fov, A / 2)
    # The optic disc is the brightest large spot (away from the rim of the field).
    sm = np.where(dfov > 0.05 * Rf[:, None, None], _bgauss(x, 0.04 * A), -1.0).reshape(n, -1)
    dy, dx = np.divmod(sm.argmax(1), A)
    base = _bmedian(x, fov, 0.4)
    light = _bgauss(x, 0.008 * A)
    win = max(2, int(0.08 * A))
    peak = np.array([light[i, max(0, dy[i] - win):dy[i] + win + 1, max(0, dx[i] - win):dx[i] + win + 1].max()
                     for i in range(n)], np.float32)
    # Disc = the bright connected region around the peak, half-way between background and peak.
    yy, xx = np.mgrid[0:A, 0:A]
    # A disc is never larger than ~0.25 of the field radius: look only that close to the peak, so a
    # bright background next to the disc does not pull the estimate away.
    close = np.hypot(yy - dy[:, None, None], xx - dx[:, None, None]) <= 0.25 * Rf[:, None, None]
    # Vessels cross the disc and split it: smooth over a vessel width and close small gaps first.
    mid = _bgauss(x, 0.015 * A)
    bright_spot = (mid > (base + 0.5 * (peak - base))[:, None, None]) & close
    bright_spot = _ero4(_dil4(bright_spot, 2), 2) & close
    lab, _ = ndi.label(bright_spot, structure=_S2)
    at = lab[np.arange(n), dy, dx]
    disc = (lab == at[:, None, None]) & (at > 0)[:, None, None]
    cnt = disc.reshape(n, -1).sum(1)
    ok = cnt > 0
    cy = np.where(ok, (disc * yy).reshape(n, -1).sum(1) / np.maximum(cnt, 1), dy)
    cx = np.where(ok, (disc * xx).reshape(n, -1).sum(1) / np.maximum(cnt, 1), dx)
    rd = np.where(ok, np.clip(np.sqrt(cnt / np.pi), 0.06 * Rf, 0.2 * Rf), 0.12 * Rf)
    # Brightest retina level (the disc/cup): exudates and a pale cup go up to about this.
    bright = np.where(fov, light, 0).reshape(n, -1).max(1)
    return {"fov": fov, "dfov": dfov, "Rf": Rf, "disc": np.stack([cy, cx], 1), "rd": rd, "bright": bright}


def _region_us(x):
    n, A, _ = x.shape
    fov = _bbody(x, 0.04, dark_border=False)  # outside a scan sector is exactly black; inside never is
    rows = fov.any(2)
    top = np.where(rows.any(1), rows.argmax(1), 0)
    bot = np.where(rows.any(1), A - 1 - rows[:, ::-1].argmax(1), A - 1)
    # Masses grow in the echogenic fibroglandular layer, not in fat or below the chest wall: keep the
    # brighter part of the field (smoothed over ~5% of the image).
    sm = _bgauss(x, 0.05 * A)
    thr = np.array([np.percentile(sm[i][fov[i]], 45) if fov[i].any() else 0.0 for i in range(n)])
    tissue = fov & (sm > thr[:, None, None])
    return {"fov": fov, "top": top, "bot": bot, "tissue": tissue, "tdist": _bedt(tissue)}


# ------------------------------------------------------------------------------------------- lesions


def _up(mask: np.ndarray, f: int) -> np.ndarray:
    """Analysis-resolution mask -> image resolution (f is an integer factor)."""
    return mask if f == 1 else np.repeat(np.repeat(mask, f, 0), f, 1)


def _chest(img, reg, f, rng, sev):
    """Opacity in a lung field: nodule (small, sharp), ground-glass (large, faint) or consolidation."""
    S = img.shape[0]
    A = S // f
    lung = reg["lung"]
    kind = int(rng.choice(3, p=[0.4, 0.3, 0.3]))  # 0 nodule, 1 ground glass, 2 consolidation
    if kind == 0:
        r = rng.uniform(0.035, 0.10)
        amp, soft, lobes, rough = 0.12 + 0.45 * sev, 0.18, 0.1, 0.0
    elif kind == 1:
        r = rng.uniform(0.10, 0.22)
        amp, soft, lobes, rough = 0.06 + 0.30 * sev, 0.45, 0.3, 0.15
    else:
        r = rng.uniform(0.12, 0.28)
        amp, soft, lobes, rough = 0.12 + 0.50 * sev, 0.3, 0.35, 0.25
    r = max(r, _min_r(S))
    iy, ix = _pick(reg["dist"] > 0.5 * r * A / 2, rng, lung)
    cy, cx = _to_norm(iy, ix, A)
    ratio = rng.uniform(0.7, 1.0)
    rho = blob(S, cy, cx, r * ratio, r, rng.uniform(0, np.pi), rng, lobes=lobes, roughness=rough)
    rho /= 0.8 + 0.4 * sev  # severity grows the lesion a little, same place and shape
    p = soft_inside(rho, soft)
    tex = 1.0 + 0.25 * smooth_noise_single(S, 14, rng)
    mask = rho <= 1.0
    if kind != 0:  # consolidation and ground glass stop at the pleura, and are patchy
        in_lung = ndi.gaussian_filter(_up(_dil4(lung[None])[0], f).astype(np.float32), 0.7 * f)
        p = p * in_lung * tex
        mask &= in_lung >= 0.5
    a = np.clip(amp * p, 0.0, 0.95)
    # Added density brightens the film and saturates towards white: 1 - (1 - I)(1 - a).
    out = 1.0 - (1.0 - img) * (1.0 - a)
    return out, mask, (iy * f, ix * f)


def _brain(img, reg, f, rng, sev):
    """Tumour in FLAIR: bright oedema that spreads irregularly, with a heterogeneous core inside."""
    S = img.shape[0]
    A = S // f
    R, dist, interior = float(reg["R"]), reg["dist"], reg["interior"]
    r = max(rng.uniform(0.10, 0.30) * R / (A / 2), _min_r(S))
    iy, ix = _pick(dist > 0.17 * R + 0.6 * r * A / 2, rng, interior, reg["head"])
    cy, cx = _to_norm(iy, ix, A)
    grow = 0.8 + 0.4 * sev
    rho_e = blob(S, cy, cx, r * rng.uniform(0.7, 1.0), r, rng.uniform(0, np.pi), rng, lobes=0.5,
                 roughness=0.3) / grow
    core_frac = rng.uniform(0.35, 0.65)
    rho_c = blob(S, cy, cx, r * core_frac, r * core_frac * rng.uniform(0.8, 1.2), rng.uniform(0, np.pi),
                 rng, lobes=0.25) / grow
    keep = _up(reg["keep"], f)
    pe = soft_inside(rho_e, 0.3) * keep
    pc = soft_inside(rho_c, 0.2) * keep
    ref = float(reg["ref"])
    # Oedema: FLAIR hyperintense, raises tissue towards ~1.2 x the brightest normal tissue.
    target_e = ref * (1.0 + 0.35 * sev)
    out = img + pe * (0.2 + 0.7 * sev) * np.maximum(target_e - img, 0.0)
    # Core: heterogeneous, partly necrotic (darker centre), still distinct from normal tissue.
    het = smooth_noise_single(S, 16, rng)
    necro = soft_inside(rho_c / rng.uniform(0.3, 0.6), 0.3) * rng.uniform(0.0, 0.6)
    core_val = ref * (0.95 + 0.2 * het) * (1.0 - necro)
    out = out + pc * (0.3 + 0.6 * sev) * (core_val - out)
    mask = ((rho_e <= 1.0) | (rho_c <= 1.0)) & (keep > 0.5)
    return out, mask, (iy * f, ix * f)


def _head_ct(img, reg, f, rng, sev):
    """Haemorrhage in the brain window: hyperdense, intraparenchymal or extra-axial (subdural/epidural)."""
    S = img.shape[0]
    A = S // f
    brain_s, R = reg["brain"], float(reg["R"])
    brain = _up(brain_s, f)
    amp = 0.12 + 0.5 * sev  # ~ +10 HU (subtle) to +50 HU (obvious) in an 80 HU window
    extra_axial = rng.random() < 0.4
    # Draw every parameter of both kinds, so the stream does not depend on which kind is drawn.
    phi0 = rng.uniform(-np.pi, np.pi)
    half = rng.uniform(0.35, 0.9) if rng.random() < 0.6 else rng.uniform(0.25, 0.45)  # crescent / lens
    thick_u = rng.uniform(0.04, 0.11)
    r = max(rng.uniform(0.06, 0.2) * R / (A / 2), _min_r(S))
    if extra_axial:
        # Blood lies against the inner table of the skull: thickness follows a crescent/lens profile.
        din = reg["din"]
        if f > 1:
            din = ndi.zoom(din, f, order=1, grid_mode=True, mode="nearest") * f
        x = grid(S)
        cy0, cx0 = _to_norm(*reg["com"], A)
        phi = np.arctan2(x[:, None] - cy0, x[None, :] - cx0)
        dphi = np.angle(np.exp(1j * (phi - phi0)))
        prof = np.clip(1.0 - (dphi / half) ** 2, 0.0, 1.0)
        thick = max(thick_u * R * f * (0.8 + 0.4 * sev), 1.6)
        rho = np.where(brain & (prof > 0), din / np.maximum(thick * np.sqrt(prof), 1e-3), _FAR)
        rho = rho.astype(np.float32)
        p = soft_inside(rho, 0.25)
        mask = rho <= 1.0
        rng.integers(1)  # same number of draws as the other branch
        if not mask.any():  # a thin skull at 32 px: fall back to the brain pixel nearest phi0
            cand = brain & (np.abs(dphi) < half)
            cand = cand if cand.any() else brain
            iy, ix = np.unravel_index(np.argmin(np.where(cand, din, np.inf)), din.shape)
            mask[iy, ix] = True
            p = np.maximum(p, mask.astype(np.float32))
        iy, ix = np.argwhere(mask)[0]
    else:
        iy, ix = _pick(reg["din"] > 0.7 * r * A / 2, rng, brain_s)
        cy, cx = _to_norm(iy, ix, A)
        iy, ix = iy * f, ix * f
        rho = blob(S, cy, cx, r * rng.uniform(0.6, 1.0), r, rng.uniform(0, np.pi), rng, lobes=0.3,
                   roughness=0.15) / (0.8 + 0.4 * sev)
        p = soft_inside(rho, 0.2) * ndi.gaussian_filter(brain.astype(np.float32), 0.5 * f)
        mask = (rho <= 1.0) & brain
        if not mask.any():
            mask[iy, ix] = True
            p[iy, ix] = 1.0
    tex = 1.0 + 0.15 * smooth_noise_single(S, 20, rng)
    level = float(reg["level"])
    out = img + p * amp * tex * (0.5 + 0.5 * np.clip(level / 0.45, 0.5, 1.5))
    return out, mask, (int(iy), int(ix))


def _fundus(img, reg, f, rng, sev):
    """Glaucomatous cup (large cup-to-disc ratio), or dot-blot / flame haemorrhages, or hard exudates."""
    S = img.shape[0]
    A = S // f
    fov = _up(reg["fov"], f)
    Rf = float(reg["Rf"])
    dy, dx = (float(v) for v in reg["disc"])
    rd = float(reg["rd"])
    bright = float(reg["bright"])
    kind = int(rng.choice(3, p=[0.4, 0.35, 0.25]))  # 0 cup, 1 haemorrhage, 2 exudate
    if kind == 0:
        # Enlarged pale cup: cup-to-disc ratio 0.6 (subtle) to 0.95 (obvious), a little vertically stretched.
        cdr = 0.6 + 0.35 * sev + rng.uniform(-0.03, 0.03)
        cy, cx = _to_norm(dy, dx, A)
        off = rng.uniform(-0.15, 0.15, 2) * rd * 2 / A
        rc = max(cdr * rd * 2 / A, _min_r(S))
        rho = blob(S, cy + off[0], cx + off[1], rc * rng.uniform(1.0, 1.15), rc, 0.0, rng, lobes=0.08)
        p = soft_inside(rho, 0.2)
        # The cup never leaves the disc: clip it to the disc grown by one pixel.
        x = grid(S)
        in_disc = np.hypot(x[:, None] - cy, x[None, :] - cx) <= (rd + 1.0) * 2 / A
        p = p * in_disc
        out = img + p * (0.35 + 0.55 * sev) * np.maximum(bright * 1.02 - img, 0.0)
        mask = (rho <= 1.0) & in_disc
        iy, ix = int(round((cy + 1) * S / 2 - 0.5)), int(round((cx + 1) * S / 2 - 0.5))
        if not mask.any():
            mask[iy, ix] = True
        return out, mask, (iy, ix)
    # Lesions in the posterior pole, away from the disc and from the rim of the field.
    yy, xx = np.mgrid[0:A, 0:A]
    allowed = (reg["dfov"] > 0.25 * Rf) & (np.hypot(yy - dy, xx - dx) > 1.6 * rd)
    iy, ix = _pick(allowed, rng, reg["fov"])
    cy, cx = _to_norm(iy, ix, A)
    rho_all = np.full((S, S), _FAR, np.float32)
    n_spots = int(rng.integers(1, 6)) if kind == 1 else int(rng.integers(3, 12))
    spread = rng.uniform(0.08, 0.25)
    for j in range(n_spots):
        oy, ox = (0.0, 0.0) if j == 0 else rng.normal(0, spread, 2)
        if kind == 1:
            r = rng.uniform(0.02, 0.06)
            flame = rng.random() < 0.4  # flame-shaped (nerve fibre layer) or round dot-blot
            ry, rx = (r * 0.35, r * 1.6) if flame else (r, r * rng.uniform(0.8, 1.2))
        else:
            r = rng.uniform(0.008, 0.03)
            ry, rx = r, r * rng.uniform(0.7, 1.3)
        ry, rx = max(ry, _min_r(S)), max(rx, _min_r(S))
        np.minimum(rho_all, blob(S, cy + oy, cx + ox, ry, rx, rng.uniform(0, np.pi), rng, lobes=0.3), out=rho_all)
    rho_all /= 0.85 + 0.3 * sev
    mask = (rho_all <= 1.0) & fov
    p_all = soft_inside(rho_all, 0.3) * fov
    if kind == 1:  # dark red blots: absorb light
        out = img * (1.0 - p_all * (0.2 + 0.6 * sev))
    else:  # waxy yellow exudates: brighter than the retina, about as bright as the disc
        out = img + p_all * (0.25 + 0.7 * sev) * np.maximum(bright - img, 0.0)
    if not mask.any():
        mask[iy * f, ix * f] = True
    return out, mask, (iy * f, ix * f)


def _breast_us(img, reg, f, rng, sev):
    """Hypoechoic mass with an irregular, spiculated margin and a short posterior acoustic shadow."""
    S = img.shape[0]
    A = S // f
    fov_s = reg["fov"]
    top, bot = int(reg["top"]), int(reg["bot"])
    depth = (np.arange(A)[:, None] - top) / max(bot - top, 1)
    r = max(rng.uniform(0.08, 0.24), _min_r(S))
    band = fov_s & (depth > 0.15) & (depth < 0.75)
    allowed = band & (reg["tdist"] > 0.8 * r * A / 2)
    iy, ix = _pick(allowed, rng, band & reg["tissue"], band, fov_s)
    cy, cx = _to_norm(iy, ix, A)
    iy, ix = iy * f, ix * f
    taller = rng.random() < 0.35  # "not parallel" (taller than wide) masses are the suspicious ones
    ry, rx = (r * rng.uniform(0.9, 1.2), r * rng.uniform(0.7, 0.9)) if taller else (r * rng.uniform(0.5, 0.8), r)
    rho = blob(S, cy, cx, ry, rx, rng.uniform(-0.3, 0.3), rng, lobes=0.35,
               spikes=int(rng.integers(0, 9)), spike_len=rng.uniform(0.2, 0.6), roughness=0.2)
    rho /= 0.85 + 0.3 * sev
    fov = _up(fov_s, f)
    keep = ndi.gaussian_filter(fov.astype(np.float32), 0.5 * f)
    p = soft_inside(rho, 0.15) * keep
    out = img * (1.0 - (0.35 + 0.55 * sev) * p)  # dark, with faint internal echoes left
    # Posterior shadow: below the mass, as wide as its lower half, fading within the margin.
    inside = rho <= 1.0
    yy = np.arange(S, dtype=np.float32)[:, None]
    L_max = margin_px(S) - 1
    colw = (p * (yy > iy)).max(0)
    bottom = np.where(inside.any(0), S - 1 - inside[::-1].argmax(0), iy).astype(np.float32)
    L = rng.uniform(0.4, 1.0) * L_max
    t = (yy - bottom[None, :]) / max(L, 1.0)
    fade = np.where(t < 0, 1.0, np.clip(1.0 - t, 0.0, 1.0)) * (yy > iy)
    shadow = colw[None, :] * fade * keep * rng.uniform(0.3, 0.7) * (0.5 + 0.5 * sev)
    out = out * (1.0 - shadow)
    mask = inside & fov
    if not mask.any():
        mask[iy, ix] = True
    return out, mask, (iy, ix)


_TASKS: dict[str, tuple[Callable, Callable]] = {
    "chest_xray": (_region_chest, _chest), "brain_mri": (_region_head, _brain),
    "fundus": (_region_fundus, _fundus), "breast_us": (_region_us, _breast_us),
    "head_ct": (_region_ct, _head_ct),
}


def check_images(images) -> tuple[np.ndarray, bool]:
    arr = np.asarray(images)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[1] < 16:
        raise ValueError(f"images must be [n, S, S] (or [S, S]) with S >= 16, got shape {np.shape(images)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"images must be floating point in [0, 1], got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False), single


def check_severity(severity, n: int) -> np.ndarray | None:
    if severity is None:
        return None
    sev = np.asarray(severity, dtype=np.float64)
    if sev.ndim == 0:
        sev = np.full(n, float(sev))
    if sev.shape != (n,):
        raise ValueError(f"severity must be a scalar or have shape ({n},), got shape {sev.shape}")
    if not np.all(np.isfinite(sev)) or sev.min(initial=0) < 0 or sev.max(initial=0) > 1:
        raise ValueError("severity values must lie in [0, 1]")
    return sev


def _analysis_factor(S: int) -> int:
    """Integer factor f so that the anatomy is estimated at S / f <= ~128 pixels."""
    for f in range(max(1, S // 128), 0, -1):
        if S % f == 0 and S // f <= 160:
            return f
    return 1


def _near(mask: np.ndarray, reach: int) -> np.ndarray:
    """Pixels within ``reach`` of the mask (Euclidean), computed on the mask's bounding box only."""
    S = mask.shape[0]
    ys, xs = np.nonzero(mask)
    y0, y1 = max(0, ys.min() - reach - 1), min(S, ys.max() + reach + 2)
    x0, x1 = max(0, xs.min() - reach - 1), min(S, xs.max() + reach + 2)
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = ndi.distance_transform_edt(~mask[y0:y1, x0:x1]) <= reach
    return out


def apply_lesions(task: str, images, seeds: list[np.random.SeedSequence],
                  severity=None) -> tuple[np.ndarray, np.ndarray]:
    """Draw one lesion (or one cluster) per image. ``seeds`` holds one SeedSequence per image."""
    arr, single = check_images(images)
    n, S, _ = arr.shape
    if len(seeds) != n:
        raise ValueError(f"need one seed per image: {len(seeds)} seeds for {n} images")
    sev = check_severity(severity, n)
    region, draw = _TASKS[task]
    arr = np.clip(arr, 0.0, 1.0)
    out = arr.copy()
    masks = np.zeros(arr.shape, np.uint8)
    f = _analysis_factor(S)
    A = S // f
    step = max(1, (1 << 21) // (A * A))  # estimate anatomy a chunk at a time to bound memory
    for start in range(0, n, step):
        small = arr[start:start + step]
        if f > 1:
            small = small.reshape(len(small), A, f, A, f).mean(axis=(2, 4))
        reg = region(small)
        for j in range(len(small)):
            i = start + j
            rng = np.random.default_rng(seeds[i])
            s = rng.uniform(0.0, 1.0)  # always drawn, so a given severity keeps the same place and shape
            if sev is not None:
                s = float(sev[i])
            new, m, (iy, ix) = draw(arr[i], {k: v[j] for k, v in reg.items()}, f, rng, s)
            m = np.asarray(m, bool)
            if not m.any():  # cannot happen by construction; keep the contract anyway
                m[int(iy), int(ix)] = True
            # Enforce "changes only near the lesion": beyond the margin the normal pixels are put back.
            near = _near(m, margin_px(S) - 1)
            out[i] = np.where(near, np.clip(new, 0.0, 1.0), arr[i])
            masks[i] = m
    if single:
        return out[0], masks[0]
    return out, masks
