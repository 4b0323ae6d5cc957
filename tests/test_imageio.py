"""samrt.imageio: orientation, modes, the pixel limit and degenerate shapes.

Right values come from OpenCV's `cv2.imread(path, cv2.IMREAD_COLOR)` where it defines the
behaviour (opencv-python-headless, in the `dev` extra), else from Pillow or the EXIF spec.
"""

import io
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from samrt import imageio
from samrt import processing as P
from samrt.errors import InputError

try:
    import cv2
except ImportError:  # only the comparisons with OpenCV skip, each with this reason
    cv2 = None
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="opencv-python-headless (the dev extra) gives the reference values")

IMAGES_PAGE = open(os.path.join(os.path.dirname(__file__), "..", "docs", "images.md")).read()

# EXIF Orientation -> the displayed image, written from the EXIF 2.3 spec's definitions
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: np.rot90(a[:, ::-1], k=1),  # mirrored left-right, then rotated 270 clockwise
    6: lambda a: np.rot90(a, k=-1),  # rotated 90 clockwise
    7: lambda a: np.rot90(a[:, ::-1], k=-1),  # mirrored left-right, then rotated 90 clockwise
    8: lambda a: np.rot90(a, k=1),  # rotated 90 counter-clockwise (270 clockwise)
}


def _cv2_rgb(path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"OpenCV cannot read {path}"
    return bgr[..., ::-1]


def _asymmetric(h=30, w=40, seed=0) -> np.ndarray:
    """Smooth colours (JPEG keeps them) with a distinct top-left corner."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1).astype(np.uint8)
    img[:6, :6] = (255, 0, 0)
    return img


# -- 1. EXIF orientation ---------------------------------------------------------------------------

def _tagged(tmp_path, fmt, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    Image.fromarray(_asymmetric()).save(path, format=fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_displayed_image(tmp_path, fmt, orientation):
    path = _tagged(tmp_path, fmt, orientation)
    with Image.open(path) as im:
        stored_decoded = np.asarray(im.convert("RGB"))  # the pixels as stored, before orientation
    got = imageio.load_image(path)
    np.testing.assert_array_equal(got, DISPLAYED[orientation](stored_decoded))
    with Image.open(path) as im:
        np.testing.assert_array_equal(got, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(imageio.decode_image_bytes(path.read_bytes()), got)  # bytes as files


@needs_cv2
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_equals_opencv(tmp_path, fmt, orientation):
    """OpenCV applies EXIF orientation to JPEG and PNG: same shape, same pixels."""
    path = _tagged(tmp_path, fmt, orientation)
    got, ref = imageio.load_image(path), _cv2_rgb(path)
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - ref).max() <= 1  # two JPEG decoders: at most 1 apart (0 here)


def test_rotated_photo_has_the_viewers_size_and_corner(tmp_path):
    """The issue's case at small scale: stored 40 wide x 30 high, tagged 'rotate 90 clockwise'."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "camera.jpg"
    Image.fromarray(_asymmetric(30, 40)).save(path, exif=exif, quality=100)
    got = imageio.load_image(path)
    assert got.shape == (40, 30, 3)  # displayed 30 wide x 40 high
    assert tuple(got[2, -3]) == pytest.approx((255, 0, 0), abs=8)  # stored top-left is now top-right


def test_broken_or_out_of_range_orientation_is_ignored(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 9  # not an orientation: shown as stored, as browsers do
    path = tmp_path / "x.png"
    Image.fromarray(_asymmetric()).save(path, exif=exif)
    np.testing.assert_array_equal(imageio.load_image(path), _asymmetric())


# -- 2. modes ---------------------------------------------------------------------------------------

@needs_cv2
def test_16bit_grey_png_is_scaled_as_opencv_does(tmp_path):
    """The issue's case: 320x240 16-bit grey, values 4000..60000; was encoded all white."""
    yy, xx = np.mgrid[0:240, 0:320]
    values = (4000 + (xx * 240 + yy) * (56000 / (320 * 240 - 1))).astype(np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    got = imageio.load_image(path)
    np.testing.assert_array_equal(got, _cv2_rgb(path))
    assert got.min() == 4000 >> 8 and got.max() == 60000 >> 8  # 15 .. 234, not white


@needs_cv2
def test_every_16bit_value_maps_as_opencv(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    for name in ("all.png", "all.tif", "all.pgm"):
        cv2.imwrite(str(tmp_path / name), values)
        np.testing.assert_array_equal(imageio.load_image(tmp_path / name), _cv2_rgb(tmp_path / name), err_msg=name)
    with Image.open(tmp_path / "all.pgm") as im:
        assert im.mode == "I"  # Pillow's container for PGM's 16-bit samples


@needs_cv2
def test_16bit_big_endian_tiff(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (20, 30)).astype(">u2")
    path = tmp_path / "be.tif"
    Image.frombytes("I;16B", (30, 20), values.tobytes()).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16B"
    np.testing.assert_array_equal(imageio.load_image(path), _cv2_rgb(path))


@needs_cv2
def test_16bit_rgb_and_rgba_as_opencv(tmp_path):
    rng = np.random.default_rng(1)
    for channels in (3, 4):
        path = tmp_path / f"c{channels}.png"
        cv2.imwrite(str(path), rng.integers(0, 65536, (20, 30, channels), dtype=np.uint16))
        np.testing.assert_array_equal(imageio.load_image(path), _cv2_rgb(path), err_msg=str(channels))
    # TIFF: Pillow keeps the high byte, OpenCV rounds v / 257 (its 16-bit grey TIFF takes the high byte)
    cv2.imwrite(str(tmp_path / "c.tif"), rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16))
    got, ref = imageio.load_image(tmp_path / "c.tif"), _cv2_rgb(tmp_path / "c.tif")
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref).max() <= 1


@needs_cv2
@pytest.mark.parametrize("case", ["P+tRNS", "LA", "RGBA", "1", "L", "CMYK"])
def test_modes_from_files_equal_opencv(tmp_path, case):
    rng = np.random.default_rng(2)
    rgb = np.kron(rng.integers(0, 256, (5, 4, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    if case == "P+tRNS":
        im, name = Image.fromarray(rgb).quantize(16), "p.png"
        im.save(tmp_path / name, transparency=3)
    elif case == "LA":
        im, name = Image.fromarray(rng.integers(0, 256, (40, 32, 2), dtype=np.uint8), "LA"), "la.png"
    elif case == "RGBA":
        im, name = Image.fromarray(rng.integers(0, 256, (40, 32, 4), dtype=np.uint8), "RGBA"), "rgba.png"
    elif case == "1":
        im, name = Image.fromarray(rng.integers(0, 2, (40, 32)).astype(bool)), "bits.png"
    elif case == "L":
        im, name = Image.fromarray(rgb[..., 0]), "grey.png"
    else:
        im, name = Image.fromarray(np.kron(rng.integers(0, 256, (5, 4, 4), dtype=np.uint8),
                                           np.ones((8, 8, 1), np.uint8)), "CMYK"), "cmyk.jpg"
    if not (tmp_path / name).exists():
        im.save(tmp_path / name, **({"quality": 100} if name.endswith(".jpg") else {}))
    with Image.open(tmp_path / name) as opened:
        assert opened.mode == case.split("+")[0]
    np.testing.assert_array_equal(imageio.load_image(tmp_path / name), _cv2_rgb(tmp_path / name))


@pytest.mark.parametrize("mode,kind,values", [("F", "float", lambda rng: rng.uniform(0, 1, (20, 30)).astype(np.float32)),
                                              ("I", "integer", lambda rng: rng.integers(0, 10**6, (20, 30)).astype(np.int32))])
def test_float_and_32bit_tiffs_are_refused_naming_the_mode(tmp_path, mode, kind, values):
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(values(np.random.default_rng(3)), mode).save(path)
    with pytest.raises(InputError, match=rf"mode '{mode}' \(TIFF, 30x20\): 32-bit .*{kind}.* no fixed range"):
        imageio.load_image(path)
    with pytest.raises(InputError, match=rf"mode '{mode}'"):
        imageio.decode_image_bytes(path.read_bytes())


def test_in_memory_modes():
    rgb = np.random.default_rng(4).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    # conversions Pillow defines, kept exactly
    for mode in ("HSV", "YCbCr", "RGBX", "PA"):
        im = base.convert(mode) if mode != "PA" else base.quantize(8).convert("PA")
        np.testing.assert_array_equal(imageio.rgb_from_pil(im), np.asarray(im.convert("RGB")), err_msg=mode)
    # premultiplied alpha is undone, then alpha dropped
    rgba = Image.new("RGBA", (2, 2), (200, 100, 50, 128))
    assert tuple(imageio.rgb_from_pil(rgba.convert("RGBa"))[0, 0]) == pytest.approx((200, 100, 50), abs=2)
    assert tuple(imageio.rgb_from_pil(Image.new("LA", (2, 2), (90, 128)).convert("La"))[0, 0]) == pytest.approx((90,) * 3, abs=2)
    # CIELab L*=50, a*=b*=0 is sRGB grey 119
    assert tuple(imageio.rgb_from_pil(Image.new("LAB", (2, 2), (128, 128, 128)))[0, 0]) == pytest.approx((119,) * 3, abs=1)
    with pytest.raises(InputError, match=r"mode 'I' \(in memory"):
        imageio.rgb_from_pil(Image.new("I", (2, 2), 7))


def test_every_pillow_mode_has_a_decision_and_the_docs_list_them():
    for mode in getattr(Image, "MODES", ()):
        assert mode in imageio.MODE_DECISIONS, f"Pillow mode {mode!r} has no decision"
    rows = dict(re.findall(r"^\| `([^`]+)` \| (.+?) \|$", IMAGES_PAGE, re.M))
    for mode, decision in imageio.MODE_DECISIONS.items():
        assert rows.get(mode) == decision, f"docs/images.md's modes table: {mode!r}"


# -- 3. pixel limits --------------------------------------------------------------------------------

def _png(w: int, h: int, mode="1", noise=False) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(np.random.default_rng(5).integers(0, 256, (h, w), dtype=np.uint8)) if noise else Image.new(mode, (w, h))
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_limit_is_checked_from_the_header_before_decoding():
    data = _png(300, 200, noise=True)
    truncated = data[:100]  # header intact, pixels gone: decoding it would fail differently
    with pytest.raises(InputError, match=r"got 200x300 = 60000 pixels, expected at most 50000 \(samrt's pixel limit"):
        imageio.decode_image_bytes(truncated, max_pixels=50_000)
    with pytest.raises(InputError, match="no image decoder reads"):
        imageio.decode_image_bytes(truncated, max_pixels=60_000)


def test_samrt_limit_above_pillows_admits_the_image(monkeypatch):
    """Pillow's bomb check must not fire below samrt's limit; its global is restored after."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2000 pixels
    data = _png(100, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a DecompressionBombWarning
        assert imageio.decode_image_bytes(data, max_pixels=10_000).shape == (100, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    # over samrt's limit: samrt's limit is the one reported
    with pytest.raises(InputError, match=r"got 100x100 = 10000 pixels, expected at most 9999"), \
            pytest.warns(Image.DecompressionBombWarning):  # Pillow (raised to 9999) warns, then samrt refuses
        imageio.decode_image_bytes(data, max_pixels=9999)
    with pytest.raises(InputError, match=r"more than 3000 pixels .*expected at most 1500 \(samrt's pixel limit"):
        imageio.decode_image_bytes(data, max_pixels=1500)  # Pillow (raised to 1500) stops at the header
    assert Image.MAX_IMAGE_PIXELS == 1000
    # no samrt limit: Pillow's applies, and is named
    with pytest.raises(InputError, match=r"PIL.Image.MAX_IMAGE_PIXELS = 1000 applies: pass max_pixels"):
        imageio.decode_image_bytes(data, max_pixels=None)


def test_pillow_limit_is_restored_after_a_failed_decode(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError):
        imageio.decode_image_bytes(_png(100, 100, noise=True)[:100], max_pixels=10_000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # disabled by the caller: left disabled
    assert imageio.decode_image_bytes(_png(100, 100), max_pixels=10_000).shape == (100, 100, 3)
    assert Image.MAX_IMAGE_PIXELS is None


def test_concurrent_decodes_share_the_raised_limit(monkeypatch):
    """Threads inside pillow_admits keep Pillow's limit raised until the last one leaves."""
    import threading

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data, errors = _png(150, 100, noise=True), []

    def work():
        try:
            for _ in range(5):
                assert imageio.decode_image_bytes(data, max_pixels=20_000).shape == (100, 150, 3)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and Image.MAX_IMAGE_PIXELS == 1000


@pytest.mark.slow
def test_issue_case_15000x12000_under_a_300m_limit():
    """180 M pixels, above Pillow's default bomb limit (178,956,970), under --max-pixels 300000000.
    A 1-bit PNG keeps the file small; the test takes about 10 s and 1 GB of memory here."""
    data = _png(15000, 12000)
    assert Image.MAX_IMAGE_PIXELS is not None and 15000 * 12000 > 2 * Image.MAX_IMAGE_PIXELS
    assert imageio.decode_image_bytes(data, max_pixels=300_000_000).shape == (12000, 15000, 3)


def test_default_limit_admits_phone_photos():
    from samrt.app.cli import build_parser
    from samrt.model_repository.render import RepoOptions

    default = RepoOptions().max_pixels
    assert default >= 50_000_000
    assert build_parser().parse_args(["serve"]).max_pixels == default
    assert build_parser().parse_args(["build-repo", "--export", "x", "--out", "y"]).max_pixels == default
    for h, w in [(4000, 6000), (6000, 8000), (6144, 8160)]:  # 24 MP camera, 48 MP and 50 MP phones
        imageio.check_pixel_count(h, w, default)


# -- 4. degenerate shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("h,w,size", [(1, 3000, 1024), (3000, 1, 1024), (2, 5000, 1024), (1, 600, 256), (1, 2049, 1024)])
def test_degenerate_shapes_are_refused_with_the_reason(h, w, size):
    side = "height" if h < w else "width"
    match = rf"got {h}x{w} pixels .*its {side} would be .* rounds to 0 pixels"
    with pytest.raises(InputError, match=match):
        P.preprocess_image(np.zeros((h, w, 3), np.uint8), size)
    with pytest.raises(InputError, match=match):
        imageio.check_resized_shape((h, w), P.get_preprocess_shape(h, w, size), size)


@pytest.mark.parametrize("size", [256, 512, 1024])
def test_the_stated_minimum_is_exact(size):
    """For every long side, the refusal is exactly where the resized short side is 0, and the
    minimum the message states is the smallest short side that works."""
    for long_side in range(1, 6 * size, 7):
        need = None
        for short in range(1, long_side + 1):
            zero = min(P.get_preprocess_shape(short, long_side, size)) == 0
            if not zero:
                need = short
                break
            with pytest.raises(InputError) as e:
                imageio.check_resized_shape((short, long_side), P.get_preprocess_shape(short, long_side, size), size)
        if need is not None and need > 1:
            assert f"at least {need} pixels" in str(e.value)
        imageio.check_resized_shape((need, long_side), P.get_preprocess_shape(need, long_side, size), size)


def test_borderline_shapes_are_admitted():
    x, hw = P.preprocess_image(np.zeros((2, 3000, 3), np.uint8), 1024)  # 2 * 1024 / 3000 = 0.68 -> 1
    assert hw == (1, 1024) and x.shape == (1, 3, 1024, 1024)


# -- undecodable input ------------------------------------------------------------------------------

def test_undecodable_input(tmp_path):
    with pytest.raises(InputError, match=r"got 3 bytes that no image decoder reads \(UnidentifiedImageError\)"):
        imageio.decode_image_bytes(b"abc")
    with pytest.raises(InputError, match="got str, expected bytes"):
        imageio.decode_image_bytes("abc")
    with pytest.raises(InputError, match=r"cannot be read \(FileNotFoundError\)"):
        imageio.load_image(tmp_path / "missing.png")
    (tmp_path / "cut.jpg").write_bytes(_jpeg_bytes()[:300])
    with pytest.raises(InputError, match="no image decoder reads"):
        imageio.load_image(tmp_path / "cut.jpg")


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_asymmetric(64, 64)).save(buf, format="JPEG")
    return buf.getvalue()


def test_no_other_module_decodes_images():
    """Every decoder goes through samrt.imageio: no other Image.open or cv2.imread in the package."""
    root = os.path.join(os.path.dirname(__file__), "..")
    offenders = []
    for folder in ("samrt", "client", "model_repository", "engines", "benchmarks", "export"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                if name.endswith(".py") and not path.endswith(os.path.join("samrt", "imageio.py")):
                    text = open(path).read()
                    offenders += [f"{path}: {m}" for m in re.findall(r"Image\.open\(|imread\(", text)]
    assert not offenders


def test_list_images_names_the_images_of_a_folder_in_order(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.tiff", "notes.txt", "d.jpeg.bak"):
        (tmp_path / name).write_bytes(b"")  # nothing is decoded: a suffix decides
    (tmp_path / "sub.png").mkdir()           # a folder, whatever its name, is not an image
    (tmp_path / "sub.png" / "e.png").write_bytes(b"")
    assert imageio.list_images(tmp_path) == ["a.jpg", "b.PNG", "c.tiff"]
    assert set(imageio.IMAGE_SUFFIXES) >= {".jpg", ".jpeg", ".png"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no images \(\.jpg, \.jpeg, \.png"):
        imageio.list_images(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder; expected a folder of images"):
        imageio.list_images(tmp_path / "a.jpg")
