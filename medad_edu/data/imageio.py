"""Reading medical images from disk into single-channel float32 arrays in [0, 1].

Conversion rules (documented because they change what a model sees):

- 8-bit grey (L): divided by 255. 16-bit grey (I;16, I): divided by the dtype's maximum (65535), unless the
  image uses fewer bits, in which case by its own maximum (many 16-bit scans store 12-bit data).
- Float TIFF (F): min-max scaled to [0, 1].
- RGB / RGBA / palette (P) / LA: converted to RGB first (alpha is dropped after compositing on black,
  palette colours are looked up), then to grey with the ITU-R 601 luma weights (L = 0.299 R + 0.587 G + 0.114 B).
  Colour-mapped slices (BMAD's BraTS PNGs) are thus mapped to a monotone grey ramp only approximately; a
  colour map's order is not recoverable in general, so we document the luma rule rather than guess the map.
- DICOM (.dcm): pixel data with rescale slope/intercept applied, then min-max scaled to [0, 1]; MONOCHROME1
  is inverted so that bright means dense as in MONOCHROME2.

Explained in notebooks/01_data.ipynb.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}
MIN_SIDE = 8  # smaller images are rejected: nothing meaningful survives resizing them


class ImageReadError(ValueError):
    """An image file could not be read or converted; the message names the file and why."""


def _pil_to_grey(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.min() < 0:
            arr = arr - arr.min()
        top = arr.max()
        # 16-bit containers often hold 12-bit data: scale by the container max only if it is used
        scale = 65535.0 if top > 4095 else (4095.0 if top > 255 else max(top, 1.0))
        return np.clip(arr / scale, 0, 1).astype(np.float32)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageReadError(f"{path}: float image contains NaN or infinity")
        lo, hi = arr.min(), arr.max()
        return ((arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)).astype(np.float32)
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - pydicom is a pinned dependency
        raise ImageReadError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from err
    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array.astype(np.float64)
    except Exception as err:
        raise ImageReadError(f"{path}: not a readable DICOM file ({err})") from err
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and getattr(ds, "SamplesPerPixel", 1) > 1:
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    elif arr.ndim == 3:  # multi-frame: take the middle frame
        arr = arr[arr.shape[0] // 2]
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    lo, hi = arr.min(), arr.max()
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as a 2-D float32 array in [0, 1] (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.suffix.lower() == ".dcm":
        arr = _read_dicom(path)
    else:
        try:
            with Image.open(path) as img:
                img.load()
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)  # multi-page TIFF: first page
                arr = _pil_to_grey(img, path)
        except UnidentifiedImageError as err:
            raise ImageReadError(f"{path}: not a readable image (unknown or corrupt format)") from err
        except OSError as err:
            raise ImageReadError(f"{path}: could not be read ({err})") from err
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D image after conversion, got shape {arr.shape}")
    if min(arr.shape) < MIN_SIDE:
        raise ImageReadError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} pixels; at least "
                             f"{MIN_SIDE}x{MIN_SIDE} is needed")
    return arr


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file and binarise it (any non-zero pixel is lesion)."""
    return (read_image(path) > 0).astype(np.uint8)


def resize(arr: np.ndarray, size: int, is_mask: bool = False) -> np.ndarray:
    """Resize to ``size x size``: bilinear (antialiased) for images, nearest for masks.

    Non-square images are stretched, as in BMAD's and MedIAnomaly's loaders (they resize without cropping).
    """
    if arr.shape == (size, size):
        return arr.astype(np.uint8 if is_mask else np.float32)
    if is_mask:
        img = Image.fromarray((arr > 0).astype(np.uint8) * 255)
        return (np.asarray(img.resize((size, size), Image.NEAREST)) > 127).astype(np.uint8)
    img = Image.fromarray(arr.astype(np.float32))  # 32-bit float image ("F")
    out = np.asarray(img.resize((size, size), Image.BILINEAR, reducing_gap=None), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
