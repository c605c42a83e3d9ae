"""A smaller data set built from real anatomy that ships inside registry packages (no download at run time).

Explained in the book in chapter "The data" (notebooks/01_data.ipynb), section "Real anatomy, offline".

Each task starts from one real image (or one real volume) that is installed with a Python package, and
makes many normal images from it by random crops, rotations, scalings, smooth elastic deformation, slice
choice (brain), left-right flips where anatomy allows, windowing, gamma, bias fields and noise. Abnormal
images get the same lesions as the phantoms (:mod:`medad_edu.data.lesions`), placed by looking at the pixels.
Because every normal image of a task comes from one or two real sources, this set is small in anatomical
variety: use it to check that a method also works on real textures, not to claim clinical performance.

Sources (all read from the installed package's files; nothing is fetched from the network):

============  ===================================================================================  ================
task          file and what it is                                                                   licence
============  ===================================================================================  ================
brain_mri     nilearn ``datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``:    nilearn BSD-3;
              the ICBM 2009a symmetric MNI152 template (the files behind                            template: MNI /
              ``nilearn.datasets.load_mni152_template``), 197 x 233 x 189 at 1 mm, skull-stripped.  McConnell BIC
              The grey- and white-matter probability maps give a FLAIR-like contrast (grey brighter  permissive
              than white, CSF dark), like the skull-stripped BraTS FLAIR slices of BMAD; axial      notice (copy,
              slices across z give the variety.                                                     modify, share)
head_ct       pydicom-data ``data_store/data/693_UNCI.dcm``: a real axial head CT slice, 512 x 512,  MIT (pydicom-
              with skull, scalp and head holder; its brain interior is posterized (nearly flat      data); file from
              ~32 HU), so texture comes from the added CT noise.                                    a pydicom issue
chest_xray    pydicom-data ``data_store/data/RG1_UNCI.dcm``: a PA chest radiograph (CR,             MIT (pydicom-
              1955 x 1841), from the NEMA WG04 DICOM sample set.                                    data), NEMA
                                                                                                    sample image
fundus        scikit-image ``data/retina.jpg`` (``skimage.data.retina()``, bundled in the wheel):   CC0 (public
              a normal left-eye fundus photograph by M. Häggström, 1411 x 1411, RGB -> grey.        domain)
breast_us     pydicom-data ``data_store/data/gdcm-US-ALOKA-16.dcm``: a two-panel B-mode pelvic      MIT (pydicom-
              ultrasound (GDCM test data). No breast ultrasound ships in any package, so crops of   data), GDCM
              its tissue below the bladder stand in for breast parenchyma: real speckle and real    test image
              tissue texture, but not breast anatomy.
============  ===================================================================================  ================

If a package is missing, its task is left out of :data:`REAL_TASKS` and :func:`available` says why;
asking for it raises a ``ValueError`` that names the package to install (``pip install pydicom-data``).

Example::

    from medad_edu.data import real_anatomy as ra
    print(ra.available())
    x, y, m = ra.make_split("brain_mri", 50, 50, size=64, seed=0)

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from ..utils import package_dir as _pkg_dir, package_version as _version
from . import lesions as _les
from .lesions import grid, interp_matrix

ALL_TASKS: tuple[str, ...] = ("chest_xray", "brain_mri", "fundus", "breast_us", "head_ct")

# Seed codes differ from the phantoms' so the two sets never share random streams.
_CODES = {t: 100 + c for t, c in _les.TASK_CODES.items()}
MIN_SIZE, MAX_SIZE = _les.MIN_SIZE, _les.MAX_SIZE


# ------------------------------------------------------------------------------------- where files are


_NILEARN_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


def _locate(task: str) -> tuple[str | None, str]:
    """(path, description) if the source is installed, else (None, reason)."""
    if task == "brain_mri":
        d = _pkg_dir("nilearn")
        if d is None:
            return None, "missing: nilearn is not installed (pip install nilearn)"
        if _pkg_dir("nibabel") is None:
            return None, "missing: nibabel is not installed (pip install nibabel)"
        paths = [os.path.join(d, "datasets", "data", f) for f in _NILEARN_FILES.values()]
        if not all(os.path.exists(p) for p in paths):
            return None, f"missing: nilearn {_version('nilearn')} does not ship the MNI152 2009a files"
        return paths[0], (f"{paths[0]} (+ gm, wm maps; nilearn {_version('nilearn')}, BSD-3; "
                          "ICBM 2009a MNI152 template)")
    if task == "fundus":
        d = _pkg_dir("skimage")
        p = os.path.join(d, "data", "retina.jpg") if d else None
        if d is None:
            return None, "missing: scikit-image is not installed (pip install scikit-image)"
        if not os.path.exists(p):
            return None, (f"missing: scikit-image {_version('scikit-image')} does not bundle retina.jpg "
                          "(it would need a download)")
        return p, f"{p} (scikit-image {_version('scikit-image')}; CC0 fundus photograph, M. Häggström)"
    names = {"chest_xray": "RG1_UNCI.dcm", "head_ct": "693_UNCI.dcm", "breast_us": "gdcm-US-ALOKA-16.dcm"}
    what = {"chest_xray": "PA chest radiograph, NEMA WG04", "head_ct": "axial head CT slice",
            "breast_us": "pelvic B-mode ultrasound (GDCM), a stand-in for breast tissue texture"}
    if _pkg_dir("pydicom") is None:
        return None, "missing: pydicom is not installed (pip install pydicom)"
    d = _pkg_dir("data_store")
    if d is None:
        return None, "missing: pydicom-data is not installed (pip install pydicom-data)"
    p = os.path.join(d, "data", names[task])
    if not os.path.exists(p):
        return None, f"missing: {names[task]} is not in pydicom-data {_version('pydicom-data')}"
    return p, f"{p} ({what[task]}; pydicom-data {_version('pydicom-data')}, MIT)"


def available() -> dict[str, str]:
    """For each of the five tasks: the source file it uses, or why it is missing."""
    return {t: _locate(t)[1] for t in ALL_TASKS}


REAL_TASKS: tuple[str, ...] = tuple(t for t in ALL_TASKS if _locate(t)[0] is not None)


def _check_task(task) -> str:
    if not isinstance(task, str) or task not in ALL_TASKS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(ALL_TASKS)}")
    path, why = _locate(task)
    if path is None:
        raise ValueError(f"real-anatomy task {task!r} is not available here: {why}")
    return task


# ------------------------------------------------------------------------------------------- loading


def _pyramid(img: np.ndarray, smallest: int = 48) -> list[np.ndarray]:
    """Image halved by 2 x 2 means until it is small: sampling from the level just above the output size
    avoids aliasing when a 1000-pixel source becomes a 64-pixel image."""
    levels = [img.astype(np.float32)]
    while min(levels[-1].shape[-2:]) >= 2 * smallest:
        a = levels[-1]
        h, w = (a.shape[-2] // 2) * 2, (a.shape[-1] // 2) * 2
        a = a[..., :h, :w]
        levels.append(a.reshape(*a.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1)))
    return levels


def _square(img: np.ndarray, fill: float) -> np.ndarray:
    """Pad the shorter side so the image is square and centred."""
    h, w = img.shape[-2:]
    s = max(h, w)
    out = np.full(img.shape[:-2] + (s, s), fill, np.float32)
    y0, x0 = (s - h) // 2, (s - w) // 2
    out[..., y0:y0 + h, x0:x0 + w] = img
    return out


def _read_dicom(path: str) -> tuple[np.ndarray, object]:
    import pydicom

    ds = pydicom.dcmread(path)
    return ds.pixel_array, ds


@lru_cache(maxsize=None)
def _source(task: str):
    """Load a task's source once per process, as float32 arrays (pyramids)."""
    path, _ = _locate(task)
    if task == "brain_mri":
        import nibabel as nib

        d = os.path.dirname(path)
        # Axial slices from the floor of the lateral ventricles up to the centrum semiovale: the brain is
        # large there, as in BraTS slices. Volume axes are (x: left-right, y: back-front, z: up).
        z_lo, z_hi = 62, 135
        vol = {}
        for k, f in _NILEARN_FILES.items():
            img = nib.load(os.path.join(d, f))
            vol[k] = np.asarray(img.dataobj[:, :, z_lo:z_hi], dtype=np.float32) / 255.0
        # FLAIR-like contrast from tissue probabilities: grey > white >> CSF; CSF = brain - grey - white.
        brain = np.stack([ndi.binary_fill_holes(vol["t1"][:, :, k] > 0.2) for k in range(z_hi - z_lo)], -1)
        brain = ndi.gaussian_filter(brain.astype(np.float32), 0.7)
        gm, wm = vol["gm"], vol["wm"]
        csf = np.clip(brain - gm - wm, 0, 1)
        stack = []
        for w in (gm, wm, csf):
            s = np.transpose(w, (2, 1, 0))[:, ::-1, :]  # [z, y (front at top), x]
            stack.append(_square(np.ascontiguousarray(s), 0.0))
        return {"levels": _pyramid(np.stack(stack))}  # each level [3 (gm, wm, csf), z, N, N]
    if task == "head_ct":
        from pydicom.pixels import apply_modality_lut

        px, ds = _read_dicom(path)
        hu = apply_modality_lut(px, ds).astype(np.float32)
        hu = np.maximum(hu, -1024.0)  # outside the reconstruction circle = air
        # The stored brain is posterized into flat blocks; a median filter on soft tissue only (bone and
        # air untouched) hides the block edges without blurring the skull.
        soft = (hu > -100) & (hu < 100)
        hu = np.where(soft, ndi.gaussian_filter(ndi.median_filter(hu, size=7), 1.5), hu)
        return {"levels": _pyramid(hu)}
    if task == "chest_xray":
        px, ds = _read_dicom(path)
        a = px.astype(np.float32)
        # MONOCHROME1: high stored values are displayed dark. Invert so that, as on a viewing box, dense
        # tissue (bone, mediastinum) is bright and the air-filled lungs are dark.
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            a = a.max() - a
        lo, hi = np.percentile(a, [0.5, 99.8])
        # Gamma 1.8 gives a film-like grey scale: lungs dark grey, soft tissue mid grey, bone white.
        a = np.clip((a - lo) / (hi - lo), 0, 1) ** 1.8
        a = _square(a, 0.0)
        return {"levels": _pyramid(a)}
    if task == "fundus":
        from PIL import Image

        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        g = rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # luminance of the orange-red picture
        g = np.clip(g / np.percentile(g, 99.7), 0, 1)
        return {"levels": _pyramid(g)}
    if task == "breast_us":
        px, ds = _read_dicom(path)
        try:
            from pydicom.pixels import apply_color_lut
        except ImportError:  # pydicom < 3
            from pydicom.pixel_data_handlers.util import apply_color_lut
        rgb = apply_color_lut(px, ds).astype(np.float32)
        g = rgb.mean(-1) / max(float(rgb.max()), 1.0)
        # The two B-mode panels' tissue below the bladder: rows 200-412, columns 40-330 and 345-635.
        panels = [g[200:412, 40:330], g[200:412, 345:635]]
        panels = [np.clip(p / np.percentile(p, 99.5), 0, 1) for p in panels]
        return {"panels": [_pyramid(p, smallest=40) for p in panels]}
    raise AssertionError(task)


# ------------------------------------------------------------------------------------- augmentation


def _field(rng, S: int, cells: int) -> np.ndarray:
    A = interp_matrix(S, cells)
    return A @ rng.standard_normal((cells, cells)).astype(np.float32) @ A.T


def _sample(level: np.ndarray, S: int, cy: float, cx: float, half: float, rot: float, flip: bool,
            rng, warp: float, cval: float) -> np.ndarray:
    """Resample a square window of ``level`` (centre cy, cx and half side ``half``, in the level's pixels)
    onto S x S pixels, rotated by ``rot`` and warped by a smooth random displacement."""
    g = grid(S)
    Y, X = np.meshgrid(g, g, indexing="ij")
    if flip:
        X = -X
    c, s = np.cos(rot), np.sin(rot)
    u = (c * X - s * Y)
    v = (s * X + c * Y)
    wx, wy = _field(rng, S, 5), _field(rng, S, 5)
    u = u + warp * wx
    v = v + warp * wy
    coords = np.stack([cy + v * half, cx + u * half])
    return ndi.map_coordinates(level, coords, order=1, mode="constant", cval=cval).astype(np.float32)


def _pick_level(levels: list[np.ndarray], needed: float) -> tuple[np.ndarray, int]:
    """Coarsest pyramid level that still has >= 1.2 source pixels per output pixel (``needed`` is the
    number of full-resolution pixels per output pixel). Returns the level and its factor 2**k."""
    k = 0
    while k + 1 < len(levels) and needed / 2.0 ** (k + 1) >= 1.2:
        k += 1
    return levels[k], 2 ** k


def _at_level(c: float, f: int) -> float:
    """Full-resolution pixel coordinate -> coordinate in a level made of f x f block means."""
    return (c - 0.5 * (f - 1)) / f


def _framing(rng: np.random.Generator, full: int, half_range: tuple[float, float],
             shift: float) -> tuple[float, float, float]:
    """A random view of a square source ``full`` pixels wide: (half its width, centre y, centre x) in source
    pixels; the half width is a fraction in ``half_range`` of ``full``, the centre moves by up to ``shift``."""
    half_full = rng.uniform(*half_range) * full
    cy = full / 2 + rng.uniform(-shift, shift) * full
    cx = full / 2 + rng.uniform(-shift, shift) * full
    return half_full, cy, cx


def _one(task: str, src: dict, S: int, rng: np.random.Generator, noise_rng: np.random.Generator) -> np.ndarray:
    rot = np.deg2rad(rng.uniform(-1, 1))
    warp = 0.0
    if task == "chest_xray":
        full = src["levels"][0].shape[0]
        zoom = rng.uniform(0.72, 0.86)  # fraction of the film seen; small enough never to leave the film
        half_full = zoom * full / 2
        cy = full / 2 + rng.uniform(-0.04, 0.04) * full
        cx = full / 2 + rng.uniform(-0.04, 0.04) * full
        rot *= 6
        level, f = _pick_level(src["levels"], 2 * half_full / S)
        img = _sample(level, S, _at_level(cy, f), _at_level(cx, f), half_full / f, rot, False, rng,
                      rng.uniform(0.01, 0.03), 0.0)
        img = np.clip(img, 0, 1) ** np.exp(rng.uniform(-0.25, 0.25))
        img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05)
        img = img * (1 + rng.uniform(0.0, 0.06) * _field(rng, S, 3))
        return img + rng.uniform(0.005, 0.02) * noise_rng.standard_normal((S, S), dtype=np.float32)
    if task == "fundus":
        half_full, cy, cx = _framing(rng, src["levels"][0].shape[0], (0.5, 0.56), 0.03)
        rot *= 20
        flip = rng.random() < 0.5  # left or right eye
        level, f = _pick_level(src["levels"], 2 * half_full / S)
        img = _sample(level, S, _at_level(cy, f), _at_level(cx, f), half_full / f, rot, flip, rng,
                      rng.uniform(0.005, 0.02), 0.0)
        fov = img > 0.04
        img = np.clip(img, 0, 1) ** np.exp(rng.uniform(-0.25, 0.25)) * rng.uniform(0.8, 1.1)
        img = img * (1 + rng.uniform(0.02, 0.1) * _field(rng, S, 3))
        return (img + rng.uniform(0.005, 0.02) * noise_rng.standard_normal((S, S), dtype=np.float32)) * fov
    if task == "head_ct":
        half_full, cy, cx = _framing(rng, src["levels"][0].shape[0], (0.42, 0.52), 0.04)
        rot *= 15
        flip = rng.random() < 0.5
        level, f = _pick_level(src["levels"], 2 * half_full / S)
        hu = _sample(level, S, _at_level(cy, f), _at_level(cx, f), half_full / f, rot, flip, rng,
                     rng.uniform(0.01, 0.03), -1024.0)
        # Correlated quantum noise and a slight grey/white texture on the posterized brain.
        n = ndi.gaussian_filter(noise_rng.standard_normal((S, S), dtype=np.float32), 0.35 * S / 64)
        n /= n.std() + 1e-6
        hu = hu + rng.uniform(2.0, 5.0) * n + rng.uniform(1.0, 3.0) * _field(rng, S, 16) * (hu > 0) * (hu < 80)
        level_w, width_w = rng.uniform(32, 45), rng.uniform(70, 100)
        return (hu - (level_w - width_w / 2)) / width_w
    if task == "brain_mri":
        nz = src["levels"][0].shape[1]
        z = rng.uniform(0, nz - 1)
        half_full, cy, cx = _framing(rng, src["levels"][0].shape[-1], (0.5, 0.6), 0.04)
        rot *= 12
        flip = rng.random() < 0.5
        tissue, f = _pick_level(src["levels"], 2 * half_full / S)
        g = grid(S)
        Y, X = np.meshgrid(g, g, indexing="ij")
        if flip:
            X = -X
        c, s = np.cos(rot), np.sin(rot)
        w = rng.uniform(0.01, 0.03)
        u = c * X - s * Y + w * _field(rng, S, 5)
        v = s * X + c * Y + w * _field(rng, S, 5)
        coords = np.stack([np.full_like(u, z), _at_level(cy, f) + v * half_full / f,
                           _at_level(cx, f) + u * half_full / f])
        gm, wm, csf = (ndi.map_coordinates(t, coords, order=1, mode="constant") for t in tissue)
        img = (gm * rng.uniform(0.55, 0.68) + wm * rng.uniform(0.38, 0.5) + csf * rng.uniform(0.03, 0.1))
        img = img * (1 + rng.uniform(0.05, 0.2) * _field(rng, S, 3)) * rng.uniform(0.8, 1.1)
        img = np.clip(img, 0, 1) ** np.exp(rng.uniform(-0.2, 0.2))
        sd = rng.uniform(0.012, 0.04)
        n = noise_rng.standard_normal((2, S, S), dtype=np.float32)
        return np.sqrt((img + sd * n[0]) ** 2 + (sd * n[1]) ** 2)  # Rician magnitude noise
    if task == "breast_us":
        pan = src["panels"][int(rng.integers(2))]
        H, W = pan[0].shape
        side = rng.uniform(0.7, 0.95) * H
        cy = rng.uniform(side / 2, H - side / 2)
        cx = rng.uniform(side / 2, W - side / 2)
        rot *= 4
        flip = rng.random() < 0.5
        level, f = _pick_level(pan, side / S)
        img = _sample(level, S, _at_level(cy, f), _at_level(cx, f), side / 2 / f, rot, flip, rng,
                      rng.uniform(0.005, 0.02), 0.0)
        img = np.clip(img, 0, 1) ** np.exp(rng.uniform(-0.25, 0.25)) * rng.uniform(0.85, 1.15)
        speck = 1 + rng.uniform(0.05, 0.15) * noise_rng.standard_normal((S, S), dtype=np.float32)
        return img * speck
    raise AssertionError(task)


def _generate(task: str, n: int, size: int, seed: int, stream: int) -> np.ndarray:
    src = _source(task)
    seeds = _les.image_seeds(_CODES[task], stream, seed, n)
    out = np.empty((n, size, size), np.float32)
    for i, ss in enumerate(seeds):
        a, b = ss.spawn(2)
        out[i] = np.clip(_one(task, src, size, np.random.default_rng(a), np.random.default_rng(b)), 0, 1)
    return out


def make_normal(task: str, n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` normal images of ``task`` from real anatomy: float32 [n, size, size] in [0, 1]."""
    return _les.normal_images(_generate, _check_task(task), n, size, seed)


def add_lesions(task: str, images: np.ndarray, seed: int = 0,
                severity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Same lesions and contract as :func:`medad_edu.data.phantoms.add_lesions`."""
    task = _check_task(task)
    return _les.lesioned(task, _CODES[task], images, seed, severity)


def make_split(task: str, n_normal: int, n_abnormal: int, size: int = 64,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 [N,S,S], labels int64 [N], masks uint8 [N,S,S]); normals first, then abnormals made
    from their own normal images (a separate seed stream) plus a lesion."""
    task = _check_task(task)
    return _les.labelled_split(_generate, task, _CODES[task], n_normal, n_abnormal, size, seed)
