"""Reading medical images from disk into single-channel float32 arrays in [0, 1].

Conversion rules (documented because they change what a model sees). Integer images are scaled by the bit
depth of the file, never by the content of one image, so the same stored value means the same grey level in
every image of a set:

- 8-bit grey (L): divided by 255.
- 16-bit grey PNG / TIFF (I;16, I;16B...): divided by 65535, the container's full range, even when the scanner
  used fewer bits (12-bit data in a 16-bit file then reaches only 4095 / 65535 = 0.06; rescale such a set
  yourself if you want it brighter). Signed 16-bit TIFF: (value + 32768) / 65535. 32-bit integer images (I):
  by the full range of their type (unsigned: / (2^32 - 1), signed: shifted by 2^31 first).
- Float TIFF (F): min-max scaled to [0, 1] per image (a float file has no bit depth to scale by); NaN or
  infinity is an error.
- RGB / RGBA / palette (P) / LA: converted to RGB first (alpha is dropped after compositing on black,
  palette colours are looked up), then to grey with the ITU-R 601 luma weights (L = 0.299 R + 0.587 G + 0.114 B).
  Colour-mapped slices (BMAD's BraTS PNGs) are thus mapped to a monotone grey ramp only approximately; a
  colour map's order is not recoverable in general, so we document the luma rule rather than guess the map.
- DICOM (.dcm): stored values v become modality values m = v * RescaleSlope + RescaleIntercept (1 and 0 when
  absent), then a linear window maps [lo, hi] to [0, 1] (values outside are clipped): the file's first
  WindowCenter c / WindowWidth w if it stores them (lo = c - w/2, hi = c + w/2), else the full range of
  BitsStored (0 .. 2^B - 1 unsigned, -2^(B-1) .. 2^(B-1) - 1 signed, PixelRepresentation 1) passed through the
  same rescale (float pixel data without a window: min-max per image). Colour DICOM (SamplesPerPixel 3)
  becomes grey by luma and is scaled by the BitsStored range.
  MONOCHROME1 is inverted so that bright means dense as in MONOCHROME2. Multi-frame files: the middle frame.
- An image larger than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is refused with an
  error naming the file, before it is decoded.

Explained in notebooks/01_data.ipynb.

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}
MIN_SIDE = 8  # smaller images are rejected: nothing meaningful survives resizing them


class ImageReadError(ValueError):
    """An image file could not be read or converted; the message names the file and why."""


def _line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _int_range(img: Image.Image) -> tuple[float, float]:
    """(lowest, highest) value the file's integer type can hold: its bit depth, not its content."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return 0.0, 65535.0
    if mode in ("I;16S", "I;16BS", "I;16LS"):
        return -32768.0, 32767.0
    bits, signed = 32, True  # mode "I": a 32-bit signed container; find the file's own depth where it says it
    tags = getattr(img, "tag_v2", None)
    if tags is not None:  # TIFF
        bps = tags.get(258)
        bits = int(bps[0] if isinstance(bps, tuple) else bps) if bps else 32
        signed = (tags.get(339) or 1) in (2, (2,))
    elif img.format == "PNG":  # PNG has no more than 16 bits per grey sample
        bits, signed = 16, False
    if signed:
        return -float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1)
    return 0.0, float(2 ** bits - 1)


def _pil_to_grey(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = _int_range(img)
        return np.clip((arr - lo) / (hi - lo), 0, 1).astype(np.float32)
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
    except Exception as err:
        raise ImageReadError(f"{path}: not a readable DICOM file ({_line(err)})") from err
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(f"{path}: DICOM file has no pixel data (not an image)")
    try:
        arr = ds.pixel_array.astype(np.float64)
    except Exception as err:
        raise ImageReadError(f"{path}: DICOM pixel data cannot be decoded ({_line(err)})") from err
    colour = arr.ndim == 3 and arr.shape[-1] in (3, 4) and int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1
    if colour:
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    elif arr.ndim == 3:  # multi-frame: take the middle frame
        arr = arr[arr.shape[0] // 2]
    slope = _dicom_number(getattr(ds, "RescaleSlope", None), 1.0) or 1.0
    intercept = _dicom_number(getattr(ds, "RescaleIntercept", None), 0.0)
    arr = arr * slope + intercept
    centre = _dicom_number(getattr(ds, "WindowCenter", None), None)
    width = _dicom_number(getattr(ds, "WindowWidth", None), None)
    if not np.isfinite(arr).all():
        raise ImageReadError(f"{path}: DICOM pixel data contains NaN or infinity")
    if not colour and centre is not None and width is not None and width > 0:
        lo, hi = centre - width / 2, centre + width / 2
    elif "PixelData" not in ds:  # float pixel data has no bit depth: min-max, like a float TIFF
        lo, hi = float(arr.min()), float(arr.max())
    else:  # the full range of the stored bits, through the same rescale
        bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 0) or 16)
        if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:
            raw_lo, raw_hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
        else:
            raw_lo, raw_hi = 0.0, 2.0 ** bits - 1
        lo, hi = sorted((raw_lo * slope + intercept, raw_hi * slope + intercept))
    arr = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def _dicom_number(value, default):
    """A DICOM DS/IS value (possibly multi-valued: the first one counts) as a float."""
    if value is None or value == "":
        return default
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        return default if value is None else float(value)
    except (TypeError, ValueError, IndexError):
        return default


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as a 2-D float32 array in [0, 1] (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.suffix.lower() == ".dcm":
        arr = _read_dicom(path)
    else:
        try:
            with warnings.catch_warnings():
                # over MAX_IMAGE_PIXELS Pillow only warns (over twice that it raises): refuse both
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img.load()
                    if getattr(img, "n_frames", 1) > 1:
                        img.seek(0)  # multi-page TIFF: first page
                    arr = _pil_to_grey(img, path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageReadError(f"{path}: image too large to decode safely ({_line(err)}; Pillow's "
                                 f"decompression-bomb limit is PIL.Image.MAX_IMAGE_PIXELS)") from err
        except UnidentifiedImageError as err:
            raise ImageReadError(f"{path}: not a readable image (unknown or corrupt format)") from err
        except (OSError, SyntaxError, ValueError) as err:
            if isinstance(err, ImageReadError):
                raise
            raise ImageReadError(f"{path}: could not be read ({_line(err)})") from err
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
