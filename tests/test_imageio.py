"""Reading odd images: 16-bit, RGBA, palette, float, tiny, corrupt, DICOM; resizing rules."""
import numpy as np
import pytest
from PIL import Image

from medad_edu.data.imageio import ImageReadError, read_image, read_mask, resize


def test_8bit_grey(tmp_path):
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (16, 16)
    assert out[0, 0] == 0 and out[-1, -1] == pytest.approx(1.0)


def test_16bit_scaled_by_bit_depth_not_content(tmp_path):
    full = (np.linspace(0, 65535, 256).reshape(16, 16)).astype(np.uint16)
    Image.fromarray(full).save(tmp_path / "full.png")
    out = read_image(tmp_path / "full.png")
    assert out.max() == pytest.approx(1.0) and out.min() == 0.0
    twelve = (np.linspace(0, 4000, 256).reshape(16, 16)).astype(np.uint16)  # 12-bit data in a 16-bit file
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    out12 = read_image(tmp_path / "twelve.png")
    assert out12.max() == pytest.approx(4000 / 65535, rel=1e-5)  # the container's depth, not the image's max
    # the same stored value is the same grey level whatever else the image holds (PNG and TIFF alike)
    for suffix in ("png", "tif"):
        dark, bright = np.full((16, 16), 1000, np.uint16), np.full((16, 16), 1000, np.uint16)
        bright[0, 0] = 60000
        Image.fromarray(dark).save(tmp_path / f"dark.{suffix}")
        Image.fromarray(bright).save(tmp_path / f"bright.{suffix}")
        a, b = read_image(tmp_path / f"dark.{suffix}"), read_image(tmp_path / f"bright.{suffix}")
        assert a[5, 5] == b[5, 5] == pytest.approx(1000 / 65535, rel=1e-5), suffix


def test_rgb_rgba_palette_to_luma(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png")[0, 0] == pytest.approx(0.299, abs=1e-3)
    rgba = np.dstack([rgb, np.full((16, 16), 255, np.uint8)])
    rgba[:8, :, 3] = 0  # transparent half composites on black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out[0, 0] == pytest.approx(0.0, abs=1e-6) and out[-1, -1] == pytest.approx(0.299, abs=1e-3)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png")[0, 0] == pytest.approx(0.299, abs=0.01)


def test_float_tiff_minmax(tmp_path):
    arr = np.linspace(-5, 5, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(arr).save(tmp_path / "f.tif")
    out = read_image(tmp_path / "f.tif")
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_tiny_corrupt_missing(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageReadError, match="tiny.png.*4x4"):
        read_image(tmp_path / "tiny.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_mask_binarised(tmp_path):
    arr = np.zeros((16, 16), np.uint8)
    arr[2:5, 2:5] = 1  # masks saved as 0/1 rather than 0/255 are still lesions
    arr[8:10, 8:10] = 200
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = read_mask(tmp_path / "m.png")
    assert set(np.unique(m)) == {0, 1} and m.sum() == 9 + 4


def test_resize_image_and_mask():
    img = np.random.default_rng(0).random((100, 60)).astype(np.float32)
    out = resize(img, 32)
    assert out.shape == (32, 32) and out.min() >= 0 and out.max() <= 1
    mask = np.zeros((100, 60), np.uint8)
    mask[40:60, 20:40] = 1
    m = resize(mask, 32, is_mask=True)
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}


def test_dicom_rescale_and_window():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    # CT_small: int16 (PixelRepresentation 1, BitsStored 16), intercept -1024, no stored window: the full
    # signed 16-bit range through the rescale, [-32768 - 1024, 32767 - 1024] -> [0, 1]
    path = get_testdata_file("CT_small.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    out = read_image(path)
    assert out.shape == (128, 128)
    np.testing.assert_allclose(out, (raw - 1024 + 33792) / 65535, rtol=0, atol=1e-6)
    # MR_small stores WindowCenter 600 / WindowWidth 1600: [-200, 1400] -> [0, 1], clipped
    path = get_testdata_file("MR_small.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_allclose(read_image(path), np.clip((raw + 200) / 1600, 0, 1), rtol=0, atol=1e-6)
