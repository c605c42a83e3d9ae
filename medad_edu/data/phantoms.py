"""Procedural medical-image phantoms: the default, offline data of the whole project.

Explained in the book in chapter "The data" (notebooks/01_data.ipynb).

Five tasks mirror Table 4 of the All-in-One paper (one organ and modality each):

============  =====================================================================================
task          what a normal image shows
============  =====================================================================================
chest_xray    PA chest radiograph: two lung fields with vessel markings from the hila, posterior and
              anterior ribs, clavicles, spine, mediastinum and heart shadow, diaphragm domes with
              costophrenic angles, soft tissue (sometimes breast shadows), humeral heads.
brain_mri     FLAIR-like axial slice: scalp, dark skull, cortex with gyri and sulci (grey brighter than
              white matter), interhemispheric fissure, lateral ventricles, deep grey nuclei, smooth
              bias field, Rician noise.
fundus        Retinal photograph rendered as grey: circular field with vignetting, optic disc and cup,
              arteries and veins branching from the disc (temporal arcades around the macula), dark
              macula, choroidal mottling.
breast_us     B-mode ultrasound, linear or curvilinear probe: skin line, subcutaneous fat lobules with
              Cooper's ligaments, glandular layer, retromammary fat, pectoralis muscle, sometimes a rib
              with its acoustic shadow; Rayleigh speckle (two compounded looks), depth attenuation
              with time-gain compensation, power-law compression.
head_ct       Axial head CT in a brain window: bright skull, scalp, grey/white matter, sulci, fissure,
              ventricles, sometimes the head holder; correlated quantum noise.
============  =====================================================================================

Abnormal images are normal images with a lesion drawn by :mod:`medad_edu.data.lesions`: chest opacity
(nodule, ground glass, consolidation); brain tumour core with FLAIR-bright oedema; fundus glaucomatous cup,
haemorrhages or exudates; breast hypoechoic irregular mass with posterior shadowing; head CT hyperdense
haemorrhage (intraparenchymal, subdural or epidural). Masks mark the lesion.

Design choices, each for a reason:

- Geometry lives in normalised coordinates ([-1, 1] across the image), and every random number that shapes
  the anatomy is drawn independently of the pixel size: ``make_normal(task, n, 32, seed)`` and
  ``make_normal(task, n, 256, seed)`` show the same anatomies, only sharper. Pixel noise (quantum, Rician,
  speckle) is drawn afterwards at the final size. Below 64 pixels the clean image is rendered at a multiple
  of the size and averaged down, so thin structures fade instead of aliasing.
- Seeds come from ``np.random.SeedSequence([task code, stream, seed])`` (never Python's ``hash``), spawned
  once per block of 16 images: image i does not depend on n (``make_normal(t, 5)[:3] ==
  make_normal(t, 3)``), and normals, the bases of abnormals and lesions use separate streams.
- Normal variability is large on purpose (pose, scale, elastic warp, organ shapes and sizes, slice level,
  fold pattern, vessel branching, probe geometry, intensities, gamma, bias field, noise level) so that a
  model cannot memorise the training set and the nearest training image is never a copy.
- Work is vectorised over chunks of images with numpy and scipy.ndimage; there are no per-pixel loops.

Example::

    from medad_edu.data import phantoms
    x, y, m = phantoms.make_split("brain_mri", n_normal=100, n_abnormal=100, size=64, seed=0)

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from . import lesions as _les
from .lesions import TASK_CODES, grid, interp_matrix

TASKS: tuple[str, ...] = ("chest_xray", "brain_mri", "fundus", "breast_us", "head_ct")

MIN_SIZE, MAX_SIZE = _les.MIN_SIZE, _les.MAX_SIZE
_MIN_RENDER = 64  # smaller images are rendered at a multiple >= this and averaged down


# ----------------------------------------------------------------------------------------- checking


def _check_task(task) -> str:
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    return task


# --------------------------------------------------------------------------------------- primitives


def _b(a) -> np.ndarray:
    """Per-image parameter [m] -> [m, 1, 1] for broadcasting against [m, R, R] maps."""
    return np.asarray(a, np.float32)[:, None, None]


def _sig(x, w) -> np.ndarray:
    """Soft step 0 -> 1 across a band of width 4w, used for every anatomical boundary.

    A clipped linear ramp with the slope of a logistic of scale w: it looks the same after blurring and
    noise, and costs a fraction of tanh (this function runs ~100 times per chunk).
    """
    return np.clip(0.5 + x * (0.25 / w), 0.0, 1.0).astype(np.float32, copy=False)


def _bump(x, w) -> np.ndarray:
    """Gaussian-like bump exp(-x^2 / 2w^2) with compact support, cheaper than exp: (1 - (x/2.5w)^2)^2."""
    t = x * (1.0 / (2.5 * w))
    return np.square(np.clip(1.0 - t * t, 0.0, 1.0)).astype(np.float32, copy=False)


def _field(W: np.ndarray, R: int) -> np.ndarray:
    """Unit-variance smooth field from per-image lattice noise W [m, rows, cols], at R x R pixels.

    A lattice with fewer columns than rows gives structures elongated left-right (tissue layers).
    """
    Ar, Ac = interp_matrix(R, W.shape[-2]), interp_matrix(R, W.shape[-1])
    return np.matmul(np.matmul(Ar, W), Ac.T)


def _wrap(a: np.ndarray) -> np.ndarray:
    """Angle wrapped into [-pi, pi]."""
    return a - np.float32(2 * np.pi) * np.rint(a * np.float32(0.5 / np.pi))


_LUT_BINS = 1024


def _fourier_lut(coef: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Periodic random function sum_k a_k cos(k t) + b_k sin(k t) of an angle (or lateral position) t.

    coef [m, K, 2] holds the cos and sin amplitudes of harmonics 1..K. The function is tabulated on 1024
    angles per image and interpolated: one gather per pixel instead of 2K trigonometric calls.
    """
    m = coef.shape[0]
    th = np.linspace(-np.pi, np.pi, _LUT_BINS + 1, dtype=np.float32)
    k = np.arange(1, coef.shape[1] + 1, dtype=np.float32)
    table = (coef[:, None, :, 0] * np.cos(k * th[:, None]) + coef[:, None, :, 1] * np.sin(k * th[:, None])).sum(-1)
    pos = (_wrap(t) + np.float32(np.pi)) * np.float32(_LUT_BINS / (2 * np.pi))
    i0 = np.clip(pos.astype(np.int64), 0, _LUT_BINS - 1)
    w = pos - i0
    flat = table.astype(np.float32).ravel()
    base = (np.arange(m) * (_LUT_BINS + 1)).reshape((m,) + (1,) * (t.ndim - 1))
    return flat[base + i0] * (1 - w) + flat[base + i0 + 1] * w


def _phase_grad(psi: np.ndarray) -> np.ndarray:
    """|grad psi| in radians per pixel, for a phase that may jump by multiples of 2 pi."""
    out = []
    for ax in (1, 2):
        d = _wrap(np.diff(psi, axis=ax))
        g = np.empty_like(psi)
        sl = [slice(None)] * 3
        sl[ax] = slice(1, -1)
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        g[tuple(sl)] = 0.5 * (d[tuple(a)] + d[tuple(b)])
        sl[ax] = 0
        a[ax] = 0
        g[tuple(sl)] = d[tuple(a)]
        sl[ax] = -1
        a[ax] = -1
        g[tuple(sl)] = d[tuple(a)]
        out.append(g)
    return np.sqrt(out[0] ** 2 + out[1] ** 2)


class _VRng:
    """A Generator that draws every parameter for a block of m images at once: each method prepends m to
    the requested shape, so a drawing function reads as if it drew for one image, costs one call per
    parameter instead of one per image, and image i of a block never depends on how many are used."""

    def __init__(self, rng: np.random.Generator, m: int):
        self.rng, self.m = rng, m

    def _size(self, size):
        return (self.m,) + (tuple(size) if isinstance(size, (tuple, list)) else (() if size is None else (size,)))

    def uniform(self, lo=0.0, hi=1.0, size=None):
        return self.rng.uniform(lo, hi, self._size(size))

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self.rng.normal(loc, scale, self._size(size))

    def standard_normal(self, size=None):
        return self.rng.standard_normal(self._size(size))

    def random(self, size=None):
        return self.rng.random(self._size(size))

    def integers(self, lo, hi, size=None):
        return self.rng.integers(lo, hi, self._size(size))

    def choice(self, a, size=None):
        return self.rng.choice(a, self._size(size))


def _cols(*cols) -> np.ndarray:
    """Per-image scalars [m] (or constants) -> one [m, k] array."""
    m = max(np.shape(c)[0] for c in cols if np.ndim(c))
    return np.stack([np.broadcast_to(np.asarray(c, np.float64), (m,)) for c in cols], -1)


def _draw_pose(rng, rot_deg, scale, aniso, shift, warp, warp_cells=5) -> dict:
    c = warp_cells
    return {
        "rot": np.deg2rad(rng.uniform(-rot_deg, rot_deg)),
        "scale": rng.uniform(*scale),
        "aniso": rng.uniform(-aniso, aniso),
        "tx": rng.uniform(-shift, shift),
        "ty": rng.uniform(-shift, shift),
        "warp": rng.uniform(0.3, 1.0) * warp,
        "wx": rng.standard_normal((c, c)),
        "wy": rng.standard_normal((c, c)),
    }


def _coords(P: dict, R: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical coordinates (u right, v down) of every pixel: inverse pose plus a smooth elastic warp."""
    x = grid(R)
    X, Y = x[None, None, :], x[None, :, None]
    c, s = np.cos(_b(P["rot"])), np.sin(_b(P["rot"]))
    dx, dy = X - _b(P["tx"]), Y - _b(P["ty"])
    sx = _b(P["scale"] * (1 + P["aniso"]))
    sy = _b(P["scale"] * (1 - P["aniso"]))
    u = (c * dx + s * dy) / sx
    v = (-s * dx + c * dy) / sy
    w = _b(P["warp"])
    return u + w * _field(P["wx"], R), v + w * _field(P["wy"], R)


def _to_image(P: dict, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward pose (no warp): anatomical (u, v) [m, ...] -> image coordinates; inverse of _coords."""
    sh = (-1,) + (1,) * (u.ndim - 1)
    c, s = np.cos(P["rot"]).reshape(sh), np.sin(P["rot"]).reshape(sh)
    sx = (P["scale"] * (1 + P["aniso"])).reshape(sh)
    sy = (P["scale"] * (1 - P["aniso"])).reshape(sh)
    return (P["tx"].reshape(sh) + c * u * sx - s * v * sy, P["ty"].reshape(sh) + s * u * sx + c * v * sy)


def _edge(R: int, w: float = 0.012) -> float:
    """Boundary softness in normalised units: a physical width, but never below ~0.6 pixel."""
    return max(w, 1.2 / R)


def _downsample(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    m, R, _ = img.shape
    S = R // f
    return img.reshape(m, S, f, S, f).mean(axis=(2, 4))


def _gauss(img: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0.05:
        return img
    return ndi.gaussian_filter(img, (0, sigma_px, sigma_px), mode="nearest")


# ======================================================================================= chest X-ray


_C_MAIN, _C_BR, _C_SUB = 5, 3, 2


def _draw_chest(rng) -> dict:
    P = _draw_pose(rng, rot_deg=7, scale=(0.88, 1.08), aniso=0.06, shift=0.05, warp=0.035)
    G, T = 2, _T
    P.update(
        body_w=rng.uniform(0.86, 1.02), body_slope=rng.uniform(0.0, 0.12),
        lung_cx=rng.uniform(0.38, 0.46, 2), lung_ax=rng.uniform(0.27, 0.34, 2),
        lung_top=rng.uniform(-0.86, -0.72, 2), lung_ay=rng.uniform(0.8, 0.95, 2),
        lung_flare=rng.uniform(0.15, 0.4, 2),
        dome=_cols(0.0, rng.uniform(0.02, 0.09)) + rng.uniform(0.28, 0.46)[:, None],
        dome_k=rng.uniform(0.5, 1.0, 2), dome_u=rng.uniform(0.35, 0.5, 2),
        med_w=rng.uniform(0.09, 0.13), med_x=rng.uniform(-0.03, 0.03),
        heart=_cols(rng.uniform(0.06, 0.16), rng.uniform(0.22, 0.34), rng.uniform(0.26, 0.38),
                    rng.uniform(0.19, 0.27), np.deg2rad(rng.uniform(-35, -10))),
        knob=_cols(rng.uniform(-0.01, 0.03), rng.uniform(-0.42, -0.32), rng.uniform(0.05, 0.08)),
        rib_v0=rng.uniform(-1.0, -0.88), rib_dv=rng.uniform(0.15, 0.19), rib_c=rng.uniform(0.8, 1.4),
        rib_w=rng.uniform(0.02, 0.028), rib_amp=rng.uniform(0.06, 0.13), rib_jit=rng.uniform(-0.02, 0.02, 10),
        ant_v0=rng.uniform(-0.7, -0.55), ant_dv=rng.uniform(0.18, 0.24), ant_amp=rng.uniform(0.02, 0.05),
        clav=_cols(rng.uniform(-0.74, -0.6), rng.uniform(-0.3, 0.0), rng.uniform(0.1, 0.3), rng.uniform(0.0, 1.0)),
        hum=_cols(rng.uniform(0.92, 1.05), rng.uniform(-0.9, -0.72), rng.uniform(0.1, 0.17)),
        breast=rng.uniform(0.04, 0.12) * (rng.random() < 0.5),
        breast_geo=_cols(rng.uniform(0.45, 0.65), rng.uniform(0.5, 0.75), rng.uniform(0.28, 0.4)),
        bubble=rng.uniform(0.05, 0.12) * (rng.random() < 0.5),
        bubble_geo=_cols(rng.uniform(0.25, 0.45), rng.uniform(0.08, 0.16), rng.uniform(0.06, 0.11)),
        hilum=_cols(rng.uniform(0.17, 0.25), rng.uniform(-0.12, 0.02)),
        # Pulmonary vessels: trees from each hilum, heading up, out and down into the lung.
        v_ang=np.deg2rad(np.array([-105, -55, -10, 35, 75]) + rng.normal(0, 10, (G, _C_MAIN))),
        v_curv=rng.normal(0, 0.6, (G, _C_MAIN)), v_len=rng.uniform(0.35, 0.7, (G, _C_MAIN)),
        v_walk=rng.normal(0, 0.05, (G, _C_MAIN, T)),
        b_t=np.sort(rng.uniform(0.15, 0.85, (G, _C_MAIN, _C_BR)), -1),
        b_ang=np.deg2rad(rng.uniform(20, 55, (G, _C_MAIN, _C_BR))) * rng.choice([-1, 1], (G, _C_MAIN, _C_BR)),
        b_curv=rng.normal(0, 0.8, (G, _C_MAIN, _C_BR)), b_len=rng.uniform(0.15, 0.35, (G, _C_MAIN, _C_BR)),
        b_walk=rng.normal(0, 0.085, (G, _C_MAIN, _C_BR, T // 2)),
        s_t=rng.uniform(0.2, 0.8, (G, _C_MAIN, _C_BR, _C_SUB)),
        s_ang=np.deg2rad(rng.uniform(20, 60, (G, _C_MAIN, _C_BR, _C_SUB)))
        * rng.choice([-1, 1], (G, _C_MAIN, _C_BR, _C_SUB)),
        s_len=rng.uniform(0.08, 0.2, (G, _C_MAIN, _C_BR, _C_SUB)),
        s_walk=rng.normal(0, 0.16, (G, _C_MAIN, _C_BR, _C_SUB, T // 4)),
        w_main=rng.uniform(0.02, 0.03, G), ves_amp=rng.uniform(0.06, 0.13),
        tex=rng.standard_normal((15, 15)), tex_amp=rng.uniform(0.01, 0.025),
        soft=rng.uniform(0.5, 0.62), lung=rng.uniform(0.14, 0.26), bg=rng.uniform(0.0, 0.08),
        medi_i=rng.uniform(0.08, 0.16),
        gamma=np.exp(rng.uniform(-0.25, 0.25)), gain=rng.uniform(0.85, 1.1), offset=rng.uniform(-0.05, 0.05),
        bias=rng.standard_normal((3, 3)), bias_amp=rng.uniform(0.02, 0.07),
        blur=rng.uniform(0.0, 0.006), noise=rng.uniform(0.006, 0.022),
    )
    return P


def _render_chest(P: dict, R: int) -> dict:
    u, v = _coords(P, R)
    e = _edge(R, 0.015)
    au = np.abs(u)
    # Body outline: chest wall and arms leave dark air only at the far left and right; the body is thicker
    # (brighter) in the middle.
    wb = _b(P["body_w"]) + _b(P["body_slope"]) * v
    body = _sig(wb - au, 2 * e)
    thick = 0.8 + 0.2 * np.sqrt(np.clip(1 - (u / wb) ** 2, 0, 1))
    med_x = _b(P["med_x"])
    # Heart: tilted ellipse, apex to the patient's left (image right).
    hx, hy, hrx, hry, hth = (_b(P["heart"][:, i]) for i in range(5))
    ch, sh = np.cos(hth), np.sin(hth)
    hu, hv = (u - hx) * ch + (v - hy) * sh, -(u - hx) * sh + (v - hy) * ch
    heart = _sig(1 - np.sqrt((hu / hrx) ** 2 + (hv / hry) ** 2), 3 * e / hry)
    kx, ky, kr = (_b(P["knob"][:, i]) for i in range(3))
    # Aortic knob: a bulge of the left mediastinal border (centred on that border, so never a lone spot).
    kx = med_x + _b(P["med_w"]) + kx
    knob = _sig(kr - np.sqrt((u - kx) ** 2 + (v - ky) ** 2), e)
    medi = _sig(_b(P["med_w"]) * (1 + 0.3 * _sig(v + 0.1, 0.1)) - np.abs(u - med_x), e)
    medi = np.maximum(np.maximum(medi, heart), knob) * _sig(_b(P["dome"][:, 0]) + 0.08 - v, 0.05)
    lungs = np.zeros_like(u)
    lat_edge = np.zeros_like(u)
    for k, side in enumerate((-1.0, 1.0)):
        lu = side * u  # lateral coordinate, positive away from the midline
        cx, ax = _b(P["lung_cx"][:, k]), _b(P["lung_ax"][:, k])
        top, ay = _b(P["lung_top"][:, k]), _b(P["lung_ay"][:, k])
        cy = top + ay
        # Egg-shaped field: narrow apex, wide base; the dome cuts it and leaves sharp costophrenic angles.
        tt = np.clip((v - top) / (2 * ay), 0, 1)
        axv = ax * (1 - _b(P["lung_flare"][:, k]) * (0.5 - tt))
        ell = 1 - np.sqrt(((lu - cx) / axv) ** 2 + ((v - cy) / ay) ** 2)
        dome = _b(P["dome"][:, k]) + _b(P["dome_k"][:, k]) * (lu - _b(P["dome_u"][:, k])) ** 2
        lung = _sig(ell, 2 * e) * _sig(dome - v, e) * _sig(lu - 0.06, e)
        lungs = np.maximum(lungs, lung)
        lat_edge = np.maximum(lat_edge, (side * u > 0) * (cx + axv))
    lungs = lungs * (1 - medi)
    # Pulmonary vessel trees from the hila.
    m = u.shape[0]
    G = 2
    side = np.array([-1.0, 1.0], np.float32)[None, :, None]
    lateral = np.where(side > 0, 0.0, np.pi)
    # The trees start at the hila, placed by the same pose as the anatomy (the small warp is ignored).
    hx_a = P["med_x"][:, None] + side[:, :, 0] * P["hilum"][:, 0, None]
    hy_a = np.broadcast_to(P["hilum"][:, 1, None], (m, G))
    hx_i, hy_i = _to_image(P, hx_a, hy_a)
    x0 = np.broadcast_to(hx_i[:, :, None], (m, G, _C_MAIN))
    y0 = np.broadcast_to(hy_i[:, :, None], (m, G, _C_MAIN))
    sc = P["scale"][:, None, None]
    rot = P["rot"][:, None, None]
    br = {"t": P["b_t"], "ang": P["b_ang"], "curv": P["b_curv"], "len": P["b_len"] * sc[..., None],
          "walk": P["b_walk"]}
    sub = {"t": P["s_t"], "ang": P["s_ang"], "curv": np.zeros_like(P["s_len"]),
           "len": P["s_len"] * sc[..., None, None], "walk": P["s_walk"]}
    curves = _grow_tree(x0, y0, rot + lateral + side * P["v_ang"], side * P["v_curv"], P["v_len"] * sc,
                        P["v_walk"] * side[..., None], br, sub, P["w_main"] * P["scale"][:, None])
    ves = _splat(curves, R).max(1)
    ves = _gauss(ves, 0.004 * R)
    # Hilar shadows: vessels and bronchi crowd at the hila, so they are brighter there.
    hil = np.zeros_like(u)
    for k, sd in enumerate((-1.0, 1.0)):
        hil += np.exp(-0.5 * ((u - _b(P["med_x"] + sd * P["hilum"][:, 0])) ** 2
                              + (v - _b(P["hilum"][:, 1])) ** 2 / 1.5) / 0.07 ** 2)
    # Bones. Posterior ribs: arcs rising from the spine then sweeping down laterally to the chest wall.
    bones = np.zeros_like(u)
    lu = np.abs(u - med_x)
    w = _b(P["rib_w"])
    wall = _sig(lat_edge + 0.1 - lu, 0.04)
    # The ribs are evenly spaced copies of one arc: a sawtooth in "rib number" gives the distance to the
    # nearest rib in one pass instead of a loop over ribs.
    dv = _b(P["rib_dv"])
    t = (v - (_b(P["rib_c"]) * (lu - 0.18) ** 2 - 0.03) - _b(P["rib_v0"])) / dv
    k = np.clip(np.floor(t + 0.5), 0, 9)
    jit = np.take_along_axis(P["rib_jit"], k.reshape(len(k), -1).astype(np.int64), 1).reshape(k.shape)
    band = _bump((t - k) * dv - jit, w * (1 + 0.05 * k))
    bones += band * _sig(lu - 0.07, e) * wall * _b(P["rib_amp"]) * (0.35 + 0.65 * lungs)
    # Anterior ribs: fainter, running down towards the midline.
    da = _b(P["ant_dv"])
    t = (v - 0.35 * (0.9 - lu) - _b(P["ant_v0"])) / da
    k = np.clip(np.floor(t + 0.5), 0, 4)
    bones += _bump((t - k) * da, 1.4 * w) * _sig(lu - 0.25, 0.05) * wall * _b(P["ant_amp"])
    cv, ct, cc, cwid = (_b(P["clav"][:, i]) for i in range(4))
    clav_c = cv + ct * (lu - 0.1) * 0.5 + cc * (lu - 0.4) ** 2
    bones += 0.18 * _bump(v - clav_c, 0.03 + 0.012 * cwid) * _sig(0.72 - lu, 0.03) * \
        _sig(lu - 0.05, 0.02)
    # Spine: a column of vertebral bodies, seen faintly through the mediastinum.
    spine = _sig(0.07 - np.abs(u - med_x), e) * (0.7 + 0.3 * np.cos(np.pi * v / 0.11) ** 2)
    bones += 0.05 * spine * _sig(0.6 - v, 0.1)
    hxh, hyh, hrh = (_b(P["hum"][:, i]) for i in range(3))
    bones += 0.2 * _sig(hrh - np.sqrt((lu - hxh) ** 2 + (v - hyh) ** 2), e)
    # Trachea: an air column above the carina.
    trachea = _sig(0.03 - np.abs(u - med_x), e) * _sig(-0.38 - v, 0.03) * _sig(v + 1.0, 0.03)
    # Breast shadows over the lower lungs (about half the cases); gas bubble under the left dome.
    bx, by, br_ = (_b(P["breast_geo"][:, i]) for i in range(3))
    breast = _sig(br_ - np.sqrt((lu - bx) ** 2 + ((v - by) * 1.3) ** 2), 0.08) * _b(P["breast"])
    gx, gy, gr = (_b(P["bubble_geo"][:, i]) for i in range(3))
    bubble = _sig(gr - np.sqrt((u - gx) ** 2 + ((v - _b(P["dome"][:, 1]) - gy) * 1.5) ** 2), e)
    bubble *= _b(P["bubble"]) * (1 - lungs)
    soft = _b(P["soft"])
    img = _b(P["bg"]) + body * (soft * thick - _b(P["bg"]))
    img = img - lungs * (soft - _b(P["lung"])) * (1 - 0.5 * breast / 0.12)
    img = img + (_b(P["ves_amp"]) * ves + 0.12 * hil) * lungs
    img = img + _b(P["medi_i"]) * medi * body - 0.1 * trachea - bubble + bones * body + breast * body
    img = img + _b(P["tex_amp"]) * _field(P["tex"], R) * body
    img = np.clip(img, 0, 1) ** _b(P["gamma"])
    img = img * _b(P["gain"]) * (1 + _b(P["bias_amp"]) * _field(P["bias"], R)) + _b(P["offset"])
    return {"img": img}


def _finish_chest(maps: dict, P: dict, noise: np.ndarray, S: int) -> np.ndarray:
    img = maps["img"]
    img = np.stack([_gauss(img[i:i + 1], float(P["blur"][i]) * S)[0] for i in range(len(img))])
    return img + _b(P["noise"]) * noise[:, 0]


# ========================================================================= brain MRI and head CT


_SULCI = 96  # size of the per-image table of sulcal depths (covers any phase range reached)


def _draw_head(rng, ct: bool) -> dict:
    P = _draw_pose(rng, rot_deg=14, scale=(0.8, 1.02), aniso=0.05, shift=0.07, warp=0.03)
    P.update(
        level=rng.uniform(0.0, 1.0),
        head_a=rng.uniform(0.66, 0.76), head_b=rng.uniform(0.82, 0.92),
        head_h=rng.normal(0, 0.012, (4, 2)) * np.array([[0.3], [1], [1], [1]]),
        scalp=rng.uniform(0.03, 0.055) * (1.3 if ct else 1.0), skull=rng.uniform(0.03, 0.05),
        csf_t=rng.uniform(0.008, 0.02),
        gyri=rng.integers(22, 34), gyri_ph=rng.normal(0, 0.6, (6, 2)),
        fold=rng.standard_normal((16, 16)), fold_amp=rng.uniform(1.8, 3.2), sulc_tab=rng.random((2, _SULCI)),
        sdep=rng.standard_normal((8, 8)), sulc_d=rng.uniform(0.1, 0.16),
        sulc_w=rng.uniform(0.005, 0.011), gm_t=rng.uniform(0.035, 0.055),
        fiss_d=rng.uniform(0.2, 0.35), fiss_w=rng.uniform(0.006, 0.012),
        vent=_cols(rng.uniform(0.03, 0.06), rng.uniform(-0.1, 0.04), rng.uniform(1.0, 2.6),
                   rng.uniform(0.2, 0.32), rng.uniform(0.18, 0.32), rng.uniform(0.02, 0.035),
                   np.exp(rng.normal(0, 0.3))),
        vent_asym=rng.uniform(0.85, 1.15),
        nuclei=_cols(rng.uniform(0.16, 0.24), rng.uniform(-0.1, 0.05), rng.uniform(0.05, 0.08),
                     rng.uniform(0.09, 0.15)),
        tex=rng.standard_normal((16, 16)), bias=rng.standard_normal((3, 3)),
        holder=rng.random() < 0.5, holder_r=rng.uniform(0.05, 0.15),
    )
    if ct:
        P.update(
            hu_gm=rng.uniform(34, 44), hu_wm=rng.uniform(22, 32), hu_csf=rng.uniform(2, 12),
            hu_scalp=rng.uniform(20, 50), level_w=rng.uniform(32, 45), width_w=rng.uniform(70, 100),
            noise=rng.uniform(1.5, 4.5), blur=rng.uniform(0.3, 0.8), tex_amp=rng.uniform(0.5, 2.0),
        )
    else:
        P.update(
            gm=rng.uniform(0.55, 0.68), wm=rng.uniform(0.38, 0.5), csf=rng.uniform(0.03, 0.1),
            scalp_i=rng.uniform(0.45, 0.75), skull_i=rng.uniform(0.02, 0.08), diploe=rng.uniform(0.1, 0.35),
            nuc=rng.uniform(0.5, 0.6), caps=rng.uniform(0.0, 0.1), tex_amp=rng.uniform(0.02, 0.06),
            bias_amp=rng.uniform(0.05, 0.2), gamma=np.exp(rng.uniform(-0.2, 0.2)),
            gain=rng.uniform(0.8, 1.1), noise=rng.uniform(0.012, 0.045), blur=rng.uniform(0.0, 0.5),
        )
    return P


def _head_maps(P: dict, R: int) -> dict:
    """Tissue fractions of a supratentorial axial head slice (shared by MRI and CT)."""
    u, v = _coords(P, R)
    e = _edge(R, 0.008)
    lvl = _b(P["level"])
    shrink = 1 - 0.22 * lvl ** 2  # higher slices are smaller ellipses
    phi = np.arctan2(v, u)
    radial = 1 + _fourier_lut(P["head_h"], phi)
    rho = np.sqrt((u / _b(P["head_a"])) ** 2 + (v / _b(P["head_b"])) ** 2) / (radial * shrink)
    Rm = _b(0.5 * (P["head_a"] + P["head_b"])) * shrink  # mean radius: converts rho to a depth
    depth_out = (1 - rho) * Rm
    scalp_t, skull_t, csf_t = _b(P["scalp"]), _b(P["skull"]), _b(P["csf_t"])
    head = _sig(depth_out, e)
    inner_skull = scalp_t + skull_t
    skull = _sig(depth_out - scalp_t, e) * _sig(inner_skull - depth_out, e)
    diploe = _bump(depth_out - scalp_t - 0.5 * skull_t, 0.18 * skull_t) * skull
    brain = _sig(depth_out - inner_skull - csf_t, e)
    d = depth_out - inner_skull - csf_t  # depth below the brain surface
    # Gyri: sulci are lines of constant phase, roughly perpendicular to the surface, bent and spaced
    # irregularly by a smooth 2-D field so that no two brains fold alike.
    psi = (_b(P["gyri"]) * phi + _fourier_lut(P["gyri_ph"], phi)
           + _b(P["fold_amp"]) * _field(P["fold"], R))
    cos_psi = np.cos(psi)
    # Each sulcus (one 2*pi turn of the phase) gets its own depth from a per-image random table indexed
    # by the sulcus number; between two sulci a shallow secondary sulcus appears now and then.
    idx = np.floor(psi * (0.5 / np.pi) + 0.5).astype(np.int64) + _SULCI // 2
    idx = np.clip(idx, 0, _SULCI - 1) + (np.arange(len(psi)) * _SULCI)[:, None, None]
    h1 = P["sulc_tab"][:, 0].ravel()[idx]
    h2 = P["sulc_tab"][:, 1].ravel()[idx]
    sdep = _field(P["sdep"], R)
    sulc_depth = _b(P["sulc_d"]) * (0.35 + 1.1 * h1) * np.clip(1 + 0.3 * sdep, 0.5, 1.5)
    # Distance to the nearest sulcus line ~ wrapped phase / phase gradient: sulci keep a constant
    # physical width however the folds bend (at least ~0.6 pixel so they fade rather than vanish).
    gmag = _phase_grad(psi) + 1e-3
    wrapped = np.abs(_wrap(psi))
    ws = np.maximum(_b(P["sulc_w"]) * R / 2, 0.6)
    dist1 = wrapped / gmag
    dist2 = (np.pi - wrapped) / gmag
    sulcus = _sig(ws - dist1, 0.5) * _sig(sulc_depth - d, e)
    sec_depth = _b(P["sulc_d"]) * 0.45 * (h2 > 0.5)
    sulcus = np.maximum(sulcus, _sig(0.8 * ws - dist2, 0.5) * _sig(sec_depth - d, e))
    # Interhemispheric fissure from the front and back, along the midline.
    fiss = _sig(_b(P["fiss_w"]) + e - np.abs(u), e) * _sig(_b(P["fiss_d"]) - d, 0.02)
    sulcus = np.maximum(sulcus, fiss) * brain
    # Grey matter ribbon: white matter reaches into gyral crowns and bends around sulcal fundi.
    # White-matter fingers fill the middle ~40% of each gyrus; grey matter lines both banks of a sulcus.
    finger = _sig(-0.2 + 0.3 * sdep - cos_psi, 0.12)
    wm_edge = _b(P["gm_t"]) + (sulc_depth + 0.3 * _b(P["gm_t"])) * (1 - finger)
    wm = _sig(d - wm_edge, e) * brain
    # Lateral ventricles (mid and low slices): two curved bands ")(" near the midline, with bulging
    # frontal horns in front and atria behind; their size varies a lot between people (age).
    vx, vy, vk, l1, l2, vw, vsz = (_b(P["vent"][:, i]) for i in range(7))
    vis = np.clip(1.25 - 1.5 * lvl, 0, 1)
    vent = np.zeros_like(u)
    along = v - vy
    for side, asym in ((-1.0, 1.0), (1.0, _b(P["vent_asym"]))):
        centre = vx + vk * along ** 2
        width = vw * vsz * asym * vis * (0.6 + 1.0 * _bump(along + 0.75 * l1, 0.08)
                                         + 0.9 * _bump(along - 0.8 * l2, 0.08))
        extent = _sig(along + l1 * vis, 0.02) * _sig(l2 * vis - along, 0.02)
        vent = np.maximum(vent, _sig(width - np.abs(side * u - centre), e) * extent)
    vent *= brain
    nx, ny, nrx, nry = (_b(P["nuclei"][:, i]) for i in range(4))
    nuc = np.zeros_like(u)
    for side in (-1.0, 1.0):
        nuc = np.maximum(nuc, _sig(1 - np.sqrt(((u - side * nx) / nrx) ** 2 + ((v - ny) / nry) ** 2), 0.2))
    nuc *= np.clip(1.0 - 1.6 * lvl, 0, 1) * brain * (1 - vent)
    csf_out = _sig(depth_out - inner_skull, e) * (1 - brain)  # thin CSF layer under the skull
    csf = np.clip(csf_out + sulcus + vent, 0, 1)
    gm = np.clip(brain - wm - csf, 0, 1)
    wm = np.clip(wm - vent - nuc - sulcus, 0, 1)
    # Periventricular caps: a thin rim around the ventricles (slightly FLAIR-bright in normal brains).
    caps = np.clip(ndi.gaussian_filter(vent, (0, 0.02 * R, 0.02 * R)) - vent, 0, 1) * brain
    scalp = head * (1 - _sig(depth_out - scalp_t, e))
    # Head holder: a thin arc under the occiput.
    hr = _b(P["holder_r"])
    holder = _bump(np.sqrt(u ** 2 + (v + 0.2) ** 2) - (Rm * 1.22 + hr), max(0.008, 1.0 / R))
    holder *= _sig(v - 0.25, 0.05) * _b(P["holder"]) * (1 - head)
    return dict(head=head, scalp=scalp, skull=skull, diploe=diploe, csf=csf, gm=gm, wm=wm, nuc=nuc,
                caps=caps, holder=holder, brain=brain)


def _render_mri(P: dict, R: int) -> dict:
    m = _head_maps(P, R)
    img = (m["scalp"] * _b(P["scalp_i"]) + m["skull"] * (_b(P["skull_i"]) + _b(P["diploe"]) * m["diploe"])
           + m["csf"] * _b(P["csf"]) + m["gm"] * _b(P["gm"]) + m["wm"] * _b(P["wm"])
           + m["nuc"] * _b(P["nuc"]) + m["caps"] * _b(P["caps"]))
    img = img * (1 + _b(P["tex_amp"]) * _field(P["tex"], R) * m["brain"])
    img = np.clip(img * (1 + _b(P["bias_amp"]) * _field(P["bias"], R)), 0, 1) ** _b(P["gamma"])
    return {"img": img * _b(P["gain"])}


def _finish_mri(maps: dict, P: dict, noise: np.ndarray, S: int) -> np.ndarray:
    img = maps["img"]
    img = np.stack([_gauss(img[i:i + 1], float(P["blur"][i]))[0] for i in range(len(img))])
    s = _b(P["noise"])
    # Rician magnitude noise: |signal + complex Gaussian|, which also lifts the dark background.
    return np.sqrt((img + s * noise[:, 0]) ** 2 + (s * noise[:, 1]) ** 2)


def _render_ct(P: dict, R: int) -> dict:
    m = _head_maps(P, R)
    hu = -1000.0 * (1 - m["head"]) * (1 - m["holder"]) + 150.0 * m["holder"]
    hu = hu + m["scalp"] * _b(P["hu_scalp"]) + m["skull"] * (1500.0 - 700.0 * m["diploe"])
    hu = hu + m["csf"] * _b(P["hu_csf"]) + m["gm"] * _b(P["hu_gm"]) + m["wm"] * _b(P["hu_wm"])
    hu = hu + m["nuc"] * (_b(P["hu_gm"]) - 2) + m["caps"] * (_b(P["hu_wm"]) - 3)
    hu = hu + _b(P["tex_amp"]) * _field(P["tex"], R) * m["brain"]
    return {"hu": hu}


def _finish_ct(maps: dict, P: dict, noise: np.ndarray, S: int) -> np.ndarray:
    hu = maps["hu"]
    # CT noise is spatially correlated (reconstruction kernel): blur white noise, restore its std.
    n1 = _gauss(noise[:, 0], 0.35 * S / 64)
    n1 /= n1.std(axis=(1, 2), keepdims=True) + 1e-6
    hu = hu + _b(P["noise"]) * n1
    lo = _b(P["level_w"]) - _b(P["width_w"]) / 2
    return (hu - lo) / _b(P["width_w"])


# ============================================================================================ fundus


_N_MAIN, _N_BR, _N_SUB, _T = 4, 4, 2, 48


def _draw_fundus(rng) -> dict:
    side = np.where(rng.random() < 0.5, 1.0, -1.0)  # disc on the right (right eye) or left
    P = {
        "fov_r": rng.uniform(0.9, 1.0), "fov_x": rng.uniform(-0.03, 0.03), "fov_y": rng.uniform(-0.03, 0.03),
        "fov_crop": np.where(rng.random() < 0.3, rng.uniform(0.8, 1.0), 2.0),
        "side": side,
        "disc": _cols(side * rng.uniform(0.36, 0.5), rng.uniform(-0.08, 0.08), rng.uniform(0.1, 0.14),
                      rng.uniform(1.0, 1.15)),
        "cup": _cols(rng.uniform(0.2, 0.45), rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1)),
        "mac": _cols(rng.uniform(0.58, 0.72), rng.uniform(0.02, 0.12), rng.uniform(0.12, 0.2),
                     rng.uniform(0.15, 0.35)),
        "base": rng.uniform(0.35, 0.5), "vign": rng.uniform(0.2, 0.5), "rim_i": rng.uniform(0.75, 0.9),
        "cup_i": rng.uniform(0.9, 1.0), "vein_c": rng.uniform(0.3, 0.5), "art_c": rng.uniform(0.18, 0.32),
        "tex": rng.standard_normal((12, 12)), "tex_amp": rng.uniform(0.015, 0.04),
        "illum": rng.standard_normal((3, 3)), "illum_amp": rng.uniform(0.03, 0.09),
        "gamma": np.exp(rng.uniform(-0.2, 0.2)), "noise": rng.uniform(0.005, 0.02), "blur": rng.uniform(0, 0.5),
    }
    # Vessel trees: [type (vein, artery), main vessel, ...]. Angles are relative to the temporal direction.
    main_ang = np.deg2rad(np.array([-72, 72, -140, 140]) + rng.normal(0, 10, (2, _N_MAIN)))
    main_ang[:, 1] += np.deg2rad(rng.normal(8, 4, _N_MAIN)) * np.sign(main_ang[:, 1])  # arteries beside veins
    main_curv = np.array([1.1, -1.1, 0.3, -0.3]) * rng.uniform(0.8, 1.3, (2, _N_MAIN))
    main_len = np.array([1.5, 1.5, 0.8, 0.8]) * rng.uniform(0.85, 1.15, (2, _N_MAIN))
    P.update(
        v_ang=main_ang, v_curv=main_curv, v_len=main_len,
        v_walk=rng.normal(0, 0.05, (2, _N_MAIN, _T)),
        b_t=np.sort(rng.uniform(0.12, 0.85, (2, _N_MAIN, _N_BR)), axis=-1),
        b_ang=np.deg2rad(rng.uniform(25, 65, (2, _N_MAIN, _N_BR))) * rng.choice([-1, 1], (2, _N_MAIN, _N_BR)),
        b_curv=rng.normal(0, 1.0, (2, _N_MAIN, _N_BR)), b_len=rng.uniform(0.2, 0.55, (2, _N_MAIN, _N_BR)),
        b_walk=rng.normal(0, 0.085, (2, _N_MAIN, _N_BR, _T // 2)),
        s_t=rng.uniform(0.2, 0.8, (2, _N_MAIN, _N_BR, _N_SUB)),
        s_ang=np.deg2rad(rng.uniform(25, 70, (2, _N_MAIN, _N_BR, _N_SUB)))
        * rng.choice([-1, 1], (2, _N_MAIN, _N_BR, _N_SUB)),
        s_len=rng.uniform(0.1, 0.3, (2, _N_MAIN, _N_BR, _N_SUB)),
        s_walk=rng.normal(0, 0.16, (2, _N_MAIN, _N_BR, _N_SUB, _T // 4)),
        w_main=_cols(rng.uniform(0.026, 0.034), rng.uniform(0.018, 0.024)),
    )
    return P


def _curves(x0, y0, ang0, curv, length, walk):
    """Integrate heading = ang0 + curv * s + random walk; returns points [..., T] and headings."""
    T = walk.shape[-1]
    s = np.linspace(0, 1, T, dtype=np.float32)
    heading = ang0[..., None] + curv[..., None] * s * length[..., None] + np.cumsum(walk, -1)
    ds = (length / (T - 1))[..., None]
    dx = np.cos(heading) * ds
    dy = np.sin(heading) * ds
    x = x0[..., None] + np.concatenate([np.zeros_like(dx[..., :1]), np.cumsum(dx[..., :-1], -1)], -1)
    y = y0[..., None] + np.concatenate([np.zeros_like(dy[..., :1]), np.cumsum(dy[..., :-1], -1)], -1)
    return x, y, heading


def _at(arr, t):
    """Linear interpolation of arr [..., T] at fractional positions t in [0, 1] (shape [..., K])."""
    T = arr.shape[-1]
    f = t * (T - 1)
    i0 = np.clip(np.floor(f).astype(int), 0, T - 2)
    w = f - i0
    return np.take_along_axis(arr, i0, -1) * (1 - w) + np.take_along_axis(arr, i0 + 1, -1) * w


def _grow_tree(x0, y0, ang0, curv, length, walk, br: dict, sub: dict, w0):
    """Three generations of centre lines: main vessels, their branches, and the branches' branches.

    All arrays carry leading dims [m, G, N_main, ...]; ``br``/``sub`` hold t (where along the parent the
    child starts, 0..1), ang (angle to the parent's heading), curv, len and walk. Returns a list of
    (x, y, width) arrays, one per generation, with width tapering along each curve.
    """
    x, y, h = _curves(x0, y0, ang0, curv, length, walk)
    bx0, by0, bh0 = _at(x, br["t"]), _at(y, br["t"]), _at(h, br["t"])
    bx, by, bh = _curves(bx0, by0, bh0 + br["ang"], br["curv"], br["len"], br["walk"])
    sx0, sy0, sh0 = _at(bx, sub["t"]), _at(by, sub["t"]), _at(bh, sub["t"])
    sx, sy, _ = _curves(sx0, sy0, sh0 + sub["ang"], sub["curv"], sub["len"], sub["walk"])
    def taper(a):
        return np.linspace(1.0, 0.55, a.shape[-1], dtype=np.float32)

    w_main = w0[:, :, None, None] * taper(x) * np.ones_like(x)
    w_br = (0.62 * w0)[:, :, None, None, None] * taper(bx) * (1 - 0.3 * br["t"][..., None])
    w_sub = (0.38 * w0)[:, :, None, None, None, None] * taper(sx) * np.ones_like(sx)
    return [(x, y, w_main), (bx, by, w_br), (sx, sy, w_sub)]


def _splat(curves: list, R: int) -> np.ndarray:
    """Rasterise centre lines [m, G, ..., T] into opacity maps [m, G, R, R] (no per-pixel loops).

    Points are resampled about 0.6 pixel apart, splatted bilinearly with weight (width x spacing) into
    one layer per blur width, and each layer is blurred by a Gaussian matched to that generation's width.
    """
    m, G = curves[0][0].shape[:2]
    layers: dict[float, np.ndarray] = {}
    for x, y, w in curves:
        seg = np.sqrt(np.diff(x, axis=-1) ** 2 + np.diff(y, axis=-1) ** 2).sum(-1).max() * R / 2
        k = int(np.clip(np.ceil(seg / 0.6), 4, 4096))
        t = np.broadcast_to(np.linspace(0, 1, k, dtype=np.float32), (3,) + x.shape[:-1] + (k,))
        xs, ys, ws = _at(np.stack([x, y, np.broadcast_to(w, x.shape)]), t)
        spacing = np.sqrt(np.diff(xs, axis=-1) ** 2 + np.diff(ys, axis=-1) ** 2) * (R / 2)
        spacing = np.concatenate([spacing, spacing[..., -1:]], -1)
        wpx = ws * (R / 2)  # width in pixels
        sig = round(max(float(np.median(wpx[..., 0])) / 2.5, 0.5), 1)
        px = (xs + 1) * (R / 2) - 0.5
        py = (ys + 1) * (R / 2) - 0.5
        lead = (m, G) + (1,) * (x.ndim - 2)
        base = ((np.arange(m)[:, None] * G + np.arange(G)[None, :]) * R * R).reshape(lead)
        x0, y0 = np.floor(px), np.floor(py)
        fx, fy = (px - x0).ravel(), (py - y0).ravel()
        x0, y0 = x0.astype(np.int64).ravel(), y0.astype(np.int64).ravel()
        base = np.broadcast_to(base, px.shape).ravel()
        weight = (spacing * wpx).ravel()
        idx, wts = [], []
        for ox, oy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                           (1, 1, fx * fy)):
            xx, yy = x0 + ox, y0 + oy
            ok = (xx >= 0) & (xx < R) & (yy >= 0) & (yy < R)
            idx.append((base + yy * R + xx)[ok])
            wts.append((weight * ww)[ok])
        acc = np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=m * G * R * R)
        layers[sig] = layers.get(sig, 0) + acc.reshape(m, G, R, R).astype(np.float32)
    out = np.zeros((m, G, R, R), np.float32)
    for sig, layer in layers.items():
        # A line of density w px per px, blurred by sigma, peaks at w / (sqrt(2 pi) sigma): ~1 for vessels
        # wider than ~2 px, proportionally fainter for sub-pixel ones (partial volume).
        out += ndi.gaussian_filter(layer, (0, 0, sig, sig))
    return np.clip(out, 0, 1)


def _fundus_vessels(P: dict, R: int) -> np.ndarray:
    """Veins (group 0) and arteries (group 1) from the disc; temporal arcades arch around the macula."""
    m = P["side"].shape[0]
    temporal = np.where(P["side"] > 0, np.pi, 0.0)[:, None, None]  # direction from disc to macula
    flip = -P["side"][:, None, None]  # mirror angles for the other eye so arcades stay above/below
    x0 = np.broadcast_to(P["disc"][:, 0, None, None], (m, 2, _N_MAIN))
    y0 = np.broadcast_to(P["disc"][:, 1, None, None], (m, 2, _N_MAIN))
    br = {"t": P["b_t"], "ang": P["b_ang"], "curv": P["b_curv"], "len": P["b_len"], "walk": P["b_walk"]}
    sub = {"t": P["s_t"], "ang": P["s_ang"], "curv": np.zeros_like(P["s_len"]), "len": P["s_len"],
           "walk": P["s_walk"]}
    curves = _grow_tree(x0, y0, temporal + flip * P["v_ang"], flip * P["v_curv"], P["v_len"],
                        P["v_walk"] * flip[..., None], br, sub, P["w_main"])
    return _splat(curves, R)


def _render_fundus(P: dict, R: int) -> dict:
    x = grid(R)
    X, Y = x[None, None, :], x[None, :, None]
    u, v = X - _b(P["fov_x"]), Y - _b(P["fov_y"])
    r = np.sqrt(u ** 2 + v ** 2)
    e = _edge(R, 0.01)
    fov = _sig(_b(P["fov_r"]) - r, e) * _sig(_b(P["fov_crop"]) - np.abs(v), e)
    rn = r / _b(P["fov_r"])
    img = _b(P["base"]) * (1 - _b(P["vign"]) * rn ** 2)
    img = img * (1 + _b(P["tex_amp"]) * _field(P["tex"], R) + _b(P["illum_amp"]) * _field(P["illum"], R))
    dx, dy, dr, de = (_b(P["disc"][:, i]) for i in range(4))
    side = _b(P["side"])
    # Macula: darker, temporal to the disc, slightly below it.
    mdist, mdy, mr, mdepth = (_b(P["mac"][:, i]) for i in range(4))
    mx, my = dx - side * mdist, dy + mdy
    img = img * (1 - mdepth * np.exp(-0.5 * ((X - mx) ** 2 + (Y - my) ** 2) / mr ** 2))
    # Optic disc (pale, slightly tall ellipse) and the brighter cup inside it.
    dd = np.sqrt((X - dx) ** 2 + ((Y - dy) / de) ** 2)
    disc = _sig(dr - dd, 0.012)
    cdr, cox, coy = (_b(P["cup"][:, i]) for i in range(3))
    cd = np.sqrt((X - dx - cox * dr) ** 2 + ((Y - dy - coy * dr) / de) ** 2)
    cup = _sig(cdr * dr - cd, 0.012)
    img = img + disc * (_b(P["rim_i"]) - img) + cup * (_b(P["cup_i"]) - _b(P["rim_i"]))
    ves = _fundus_vessels(P, R)
    img = img * (1 - _b(P["vein_c"]) * ves[:, 0]) * (1 - _b(P["art_c"]) * ves[:, 1])
    img = np.clip(img, 0, 1) ** _b(P["gamma"])
    return {"img": img * fov}


def _finish_fundus(maps: dict, P: dict, noise: np.ndarray, S: int) -> np.ndarray:
    img = maps["img"]
    img = np.stack([_gauss(img[i:i + 1], float(P["blur"][i]))[0] for i in range(len(img))])
    return img + _b(P["noise"]) * noise[:, 0] * (img > 0.02)


# ===================================================================================== breast US


def _draw_us(rng) -> dict:
    return {
        "fan": rng.random() < 0.3, "fan_apex": rng.uniform(0.3, 0.9),
        "fan_half": np.deg2rad(rng.uniform(28, 40)), "top": rng.uniform(-1.0, -0.88),
        "lin_w": rng.uniform(0.82, 1.0), "tilt": rng.uniform(-0.1, 0.1), "zoom": rng.uniform(0.75, 1.35),
        "skin": rng.uniform(0.025, 0.045), "fat": rng.uniform(0.1, 0.3), "gland": rng.uniform(0.2, 0.42),
        "retro": rng.uniform(0.03, 0.09), "muscle": rng.uniform(0.09, 0.16),
        "bnd": rng.normal(0, 0.02, (4, 3, 2)) / np.arange(1, 4)[None, :, None], "lat_f": rng.uniform(0.8, 1.6),
        "lig": rng.standard_normal((9, 5)), "lig_f": rng.uniform(3, 6), "lig_t": rng.uniform(-1.5, 1.5),
        "lob": rng.standard_normal((10, 8)),
        "gtex": rng.standard_normal((18, 14)), "duct": rng.standard_normal((12, 5)),
        "e_skin": rng.uniform(0.8, 1.0), "e_fat": rng.uniform(0.15, 0.3), "e_gland": rng.uniform(0.5, 0.8),
        "e_retro": rng.uniform(0.12, 0.25), "e_muscle": rng.uniform(0.25, 0.4), "e_lig": rng.uniform(0.5, 1.0),
        "stri": rng.uniform(14, 24), "rib": rng.random() < 0.5, "rib_x": rng.uniform(-0.5, 0.5),
        "rib_w": rng.uniform(0.2, 0.32), "shad": rng.uniform(-0.8, 0.8, 3), "shad_on": rng.random(3) < 0.35,
        "atten": rng.uniform(0.5, 1.5), "tgc": rng.uniform(0.3, 0.9), "gamma": rng.uniform(0.5, 0.7),
        "ref": rng.uniform(1.3, 2.0), "speckle_ax": rng.uniform(0.6, 0.9), "speckle_lat": rng.uniform(1.0, 1.6),
    }


def _render_us(P: dict, R: int) -> dict:
    x = grid(R)
    X, Y = x[None, None, :], x[None, :, None]
    fan = _b(P["fan"])
    top = _b(P["top"])
    # Probe geometry: "lateral" and "depth" coordinates, and the field of view (linear or curvilinear).
    apex_y = top - _b(P["fan_apex"])
    rr = np.sqrt(X ** 2 + (Y - apex_y) ** 2)
    ang = np.arctan2(X, Y - apex_y)
    half = _b(P["fan_half"])
    e = _edge(R, 0.006)
    lat_fan, depth_fan = ang / half, (rr - _b(P["fan_apex"])) / (1 - top)
    fov_fan = _sig(half - np.abs(ang), e / 2) * _sig(rr - _b(P["fan_apex"]), e)
    lat_lin, depth_lin = X / _b(P["lin_w"]), (Y - top) / (1 - top)
    fov_lin = _sig(_b(P["lin_w"]) - np.abs(X), e) * _sig(Y - top, e) * np.ones_like(X)
    lat = fan * lat_fan + (1 - fan) * lat_lin
    depth = fan * depth_fan + (1 - fan) * depth_lin
    fov = fan * fov_fan + (1 - fan) * fov_lin
    # Tissue coordinates: zoom (how deep the image reaches) and a slight tilt of the layers.
    zd = depth * _b(P["zoom"]) + _b(P["tilt"]) * lat
    lt = lat * _b(P["lat_f"])

    t_lt = np.float32(np.pi / 2) * lt

    def boundary(k):
        return _fourier_lut(P["bnd"][:, k], t_lt)

    d1 = _b(P["skin"])
    d2 = d1 + _b(P["fat"]) + boundary(0)
    d3 = d2 + _b(P["gland"]) + boundary(1)
    d4 = d3 + _b(P["retro"]) + 0.5 * boundary(2)
    d5 = d4 + _b(P["muscle"]) + 0.5 * boundary(3)
    ew = max(0.012, 1.5 / R)
    l_skin = _sig(d1 - zd, ew)
    l_fat = _sig(zd - d1, ew) * _sig(d2 - zd, 2 * ew)
    l_gland = _sig(zd - d2, 2 * ew) * _sig(d3 - zd, 2 * ew)
    l_retro = _sig(zd - d3, 2 * ew) * _sig(d4 - zd, ew)
    l_muscle = _sig(zd - d4, ew) * _sig(d5 - zd, ew)
    l_deep = _sig(zd - d5, ew)
    # Fat lobules outlined by bright, mostly oblique Cooper's ligaments (level lines of a smooth field).
    # Level lines of a ramp plus a weak field: wavy oblique sheets, never small closed loops (which
    # would look like a cyst).
    lig_phase = _b(P["lig_f"]) * zd + _b(P["lig_t"]) * lat + 0.35 * _field(P["lig"], R)
    lig = _bump(np.sin(np.pi * lig_phase), 0.12)
    lob = np.clip(1 + 0.3 * _field(P["lob"], R), 0.3, 2)
    gtex = np.clip(1 + 0.35 * _field(P["gtex"], R), 0.2, 2)
    ducts = _bump(_field(P["duct"], R), 0.12)  # dark tubular ducts in the gland
    stri = 1 + 0.6 * np.cos(np.pi * _b(P["stri"]) * (zd + 0.02 * np.sin(4 * lt))) ** 6
    E = (l_skin * _b(P["e_skin"]) + l_fat * _b(P["e_fat"]) * lob + (l_fat + 0.5 * l_gland) * _b(P["e_lig"]) * lig
         + l_gland * _b(P["e_gland"]) * gtex * (1 - 0.7 * ducts)
         + l_retro * _b(P["e_retro"]) * lob + l_muscle * _b(P["e_muscle"]) * stri)
    # Chest wall: a bright pleural line with faint reverberations below, or a rib (bright curved surface
    # with a black acoustic shadow).
    under_rib = _sig(_b(P["rib_w"]) - np.abs(lat - _b(P["rib_x"])), 0.02) * _b(P["rib"])
    rib_top = d5 + 0.015 + 0.05 * ((lat - _b(P["rib_x"])) / _b(P["rib_w"])) ** 2
    pl = d5 + 0.05
    pleura = _bump(zd - pl, 0.01) + 0.3 * _bump(zd - 2 * pl + d1, 0.012)
    rib_line = _bump(zd - rib_top, 0.012) * under_rib
    E = E + l_deep * (0.12 + 0.9 * pleura * (1 - under_rib) + 1.1 * rib_line)
    shadow = under_rib * _sig(zd - rib_top - 0.015, 0.01)
    # Edge shadows behind a few ligaments: faint dark columns, part of normal breast sonography.
    for k in range(3):
        col = _bump(lat - _b(P["shad"][:, k]), 0.025) * _b(P["shad_on"][:, k])
        shadow = np.maximum(shadow, 0.45 * col * _sig(zd - d2, 0.02))
    E = E * (1 - 0.95 * shadow)
    # Depth attenuation, partly undone by time-gain compensation.
    att = np.exp(-_b(P["atten"]) * zd * (1 - _b(P["tgc"])))
    return {"E": E * att, "fov": fov}


def _finish_us(maps: dict, P: dict, noise: np.ndarray, S: int) -> np.ndarray:
    E, fov = maps["E"], maps["fov"]
    out = np.empty_like(E)
    for i in range(len(E)):
        # Speckle: envelope of complex Gaussian scatter blurred by the point-spread function (wider
        # laterally than axially), grain size physical so it scales with the image. Two compounded looks
        # (as in spatial compounding) and power-law compression give the granular look of breast scans.
        sa, sl = float(P["speckle_ax"][i]) * S / 128, float(P["speckle_lat"][i]) * S / 128
        z = ndi.gaussian_filter(noise[i], (0, max(sa, 0.5), max(sl, 0.6)), mode="wrap", truncate=3.0)
        env = np.sqrt((z ** 2).sum(0) / 2)
        env /= env.mean()
        out[i] = (E[i] * env / float(P["ref"][i])) ** float(P["gamma"][i])
    return np.clip(out, 0, 1) * fov


# ============================================================================================ driver


_TASK_FUNCS = {
    "chest_xray": (_draw_chest, _render_chest, _finish_chest),
    "brain_mri": (lambda r: _draw_head(r, ct=False), _render_mri, _finish_mri),
    "fundus": (_draw_fundus, _render_fundus, _finish_fundus),
    "breast_us": (_draw_us, _render_us, _finish_us),
    "head_ct": (lambda r: _draw_head(r, ct=True), _render_ct, _finish_ct),
}
_NOISE_CHANNELS = {"chest_xray": 1, "brain_mri": 2, "fundus": 1, "breast_us": 4, "head_ct": 1}
_BLOCK = 16  # images drawn together; image i depends only on (task, seed, stream, i)


def _chunk_size(R: int) -> int:
    """Images rendered together: all of a block at small sizes, fewer at 512 px to bound memory."""
    return int(max(1, min(_BLOCK, (1 << 20) // (R * R))))


def _generate(task: str, n: int, size: int, seed: int, stream: int) -> np.ndarray:
    draw, render, finish = _TASK_FUNCS[task]
    f = 1 if size >= _MIN_RENDER else int(np.ceil(_MIN_RENDER / size))
    R = size * f
    out = np.empty((n, size, size), np.float32)
    n_blocks = -(-n // _BLOCK)
    blocks = _les.image_seeds(TASK_CODES[task], stream, seed, n_blocks)
    step = _chunk_size(R)
    for b, ss in enumerate(blocks):
        k = min(_BLOCK, n - b * _BLOCK)  # images used from this block (the rest are never rendered)
        anat, pix = ss.spawn(2)
        # Anatomy parameters do not depend on the size; pixel noise is drawn at the final size, image by
        # image in order, so the first k images are the same whatever k is.
        P = {key: np.asarray(v, np.float32)[:k]
             for key, v in draw(_VRng(np.random.default_rng(anat), _BLOCK)).items()}
        noise = np.random.default_rng(pix).standard_normal((k, _NOISE_CHANNELS[task], size, size),
                                                           dtype=np.float32)
        for c in range(0, k, step):
            Pc = {key: v[c:c + step] for key, v in P.items()}
            maps = {key: _downsample(np.asarray(v, np.float32), f) for key, v in render(Pc, R).items()}
            img = finish(maps, Pc, noise[c:c + step], size)
            i0 = b * _BLOCK + c
            out[i0:i0 + len(img)] = np.clip(img, 0.0, 1.0)
    return out


def make_normal(task: str, n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` normal images of ``task``: float32 [n, size, size] in [0, 1]. Deterministic in all arguments."""
    return _les.normal_images(_generate, _check_task(task), n, size, seed)


def add_lesions(task: str, images: np.ndarray, seed: int = 0,
                severity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw one lesion into each image; returns (abnormal float32 [n,S,S] in [0,1], masks uint8 [n,S,S]).

    The image changes only inside the mask and within ``lesions.margin_px(S)`` pixels of it. ``severity``
    (scalar or [n], in [0, 1]) sets the contrast; ``None`` draws it uniformly per image so that a set ranges
    from subtle to obvious. Placement and shape depend only on (task, seed, image index, image content).
    """
    task = _check_task(task)
    return _les.lesioned(task, TASK_CODES[task], images, seed, severity)


def make_split(task: str, n_normal: int, n_abnormal: int, size: int = 64,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 [N,S,S], labels int64 [N] 0 normal / 1 abnormal, masks uint8 [N,S,S]).

    Normals come first. Abnormal images start from their own normal images (a separate seed stream, so
    they are not lesioned copies of the normals in the same split) and then get a lesion.
    """
    task = _check_task(task)
    return _les.labelled_split(_generate, task, TASK_CODES[task], n_normal, n_abnormal, size, seed)
