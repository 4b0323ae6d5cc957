"""Images as cameras and instruments write them -> HxWx3 uint8 RGB, one rule for every decoder.

numpy and Pillow only: the client imports this without torch. The server (`image_bytes`), the
CLI (`samrt segment`, `samrt amg`, `--calib-images`) and the benchmarks all decode through here:

- Orientation: the EXIF Orientation tag (1..8) is applied, as browsers and OpenCV's
  `cv2.imread` do, so sizes, clicks and masks are in the displayed orientation.
- Modes: each Pillow mode is converted as `MODE_DECISIONS` says (16-bit samples keep their high
  byte, as `cv2.imread(path, cv2.IMREAD_COLOR)` does; alpha is dropped, as OpenCV does) or
  refused with an `InputError` that names the mode; never a blank image in silence.
- Pixel limit: the size is read from the header and checked before anything is decoded, and
  Pillow's own decompression-bomb check is kept from firing below samrt's limit.
- Degenerate shapes: an image whose short side would resize to 0 pixels is refused
  (`check_resized_shape`).
- Folders: `list_images` says which files of a folder are images (`IMAGE_SUFFIXES`), in the
  order `samrt amg` numbers them.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "list_images",
    "MODE_DECISIONS",
    "decode_image_bytes",
    "load_image",
    "probe_image",
    "rgb_from_pil",
    "check_pixel_count",
    "check_resized_shape",
    "pillow_admits",
]

# Pillow mode -> what samrt does with it. The README's table is this dict (a test compares them).
MODE_DECISIONS: Dict[str, str] = {
    "RGB": "kept; Pillow gives 16-bit RGB files the high byte (as OpenCV for PNG; OpenCV rounds v / 257 "
           "for TIFF: at most 1 apart)",
    "L": "grey replicated to R, G, B (as OpenCV)",
    "1": "0 -> 0, 1 -> 255, replicated (as OpenCV)",
    "P": "palette expanded to RGB; palette transparency dropped (as OpenCV)",
    "PA": "palette expanded to RGB; alpha dropped",
    "LA": "alpha dropped, grey replicated (as OpenCV)",
    "La": "un-premultiplied, alpha dropped, grey replicated",
    "RGBA": "alpha dropped (as OpenCV's IMREAD_COLOR; not composited)",
    "RGBa": "un-premultiplied, alpha dropped",
    "RGBX": "padding byte dropped",
    "CMYK": "OpenCV's CMYK -> RGB: R = (255 - K) - (C * (255 - K) >> 8), likewise G (M), B (Y)",
    "YCbCr": "Pillow's JPEG (BT.601 full-range) YCbCr -> RGB",
    "HSV": "Pillow's HSV -> RGB",
    "LAB": "Pillow's CIELab (D65) -> sRGB; refused where the installed Pillow lacks it",
    "I;16": "16-bit grey: high byte (v >> 8, as OpenCV), replicated",
    "I;16L": "as I;16",
    "I;16B": "as I;16",
    "I;16N": "as I;16",
    "I": "from PNG or PGM/PPM (Pillow's container for their 16-bit samples): as I;16; "
         "otherwise (32-bit or signed integers) refused: no fixed range to map to 0..255",
    "F": "refused: 32-bit float has no fixed range to map to 0..255 (OpenCV's IMREAD_COLOR "
         "does not read float TIFFs either)",
}

# Formats whose mode-I images hold unsigned 16-bit samples (Pillow < 10 opens 16-bit grey PNG as
# "I"; PGM/PPM with maxval > 255 open as "I", scaled by Pillow to 0..65535).
_SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")
_ORIENTATION_TAG = 0x0112
_STRIP_BYTES = 16 << 20  # rows converted at a time (as 4-byte pixels)


# -- the pixel limit -----------------------------------------------------------------------------

class _PillowLimit:
    """Process-wide bookkeeping for raising PIL.Image.MAX_IMAGE_PIXELS while samrt decodes."""

    lock = threading.Lock()
    active = 0  # decodes inside pillow_admits
    saved: Optional[int] = None  # the value to restore, when raised
    raised = False


@contextmanager
def pillow_admits(max_pixels: Optional[int]) -> Iterator[None]:
    """Inside, Pillow's decompression-bomb check admits every image of at most `max_pixels`.

    Pillow has no per-call limit, only the global `PIL.Image.MAX_IMAGE_PIXELS` (default
    89,478,485: a warning above it, `DecompressionBombError` above twice it). When it is lower
    than `max_pixels`, it is raised to `max_pixels` while at least one decode is inside, and the
    caller's value is restored when the last one leaves. Nothing is changed when it is already
    high enough (the default `--max-pixels` is below it) or when `max_pixels` is None.
    Another thread's Pillow call made in that window sees the raised value.
    """
    if max_pixels is None:
        yield
        return
    with _PillowLimit.lock:
        if _PillowLimit.active == 0:
            _PillowLimit.saved, _PillowLimit.raised = Image.MAX_IMAGE_PIXELS, False
        _PillowLimit.active += 1
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < max_pixels:
            Image.MAX_IMAGE_PIXELS = int(max_pixels)
            _PillowLimit.raised = True
    try:
        yield
    finally:
        with _PillowLimit.lock:
            _PillowLimit.active -= 1
            if _PillowLimit.active == 0 and _PillowLimit.raised:
                Image.MAX_IMAGE_PIXELS = _PillowLimit.saved
                _PillowLimit.raised = False


def check_pixel_count(height: int, width: int, max_pixels: Optional[int], what: str = "image") -> None:
    """Refuse (InputError) an image of more than `max_pixels` pixels; None admits any size."""
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(
            f"{what}: got {height}x{width} = {height * width} pixels, expected at most {max_pixels} "
            "(samrt's pixel limit: --max-pixels on the server, max_pixels in the library); "
            "downscale the image or raise the limit")


# -- degenerate shapes ---------------------------------------------------------------------------

def check_resized_shape(original_hw: Tuple[int, int], resized_hw: Tuple[int, int], image_size: int,
                        what: str = "image") -> None:
    """Refuse (InputError) an image whose resized side would be 0 pixels.

    `resized_hw` is `samrt.processing.get_preprocess_shape(h, w, image_size)`: the longest side
    becomes `image_size`, and the short side `round(short * image_size / long)`, which is 0 when
    the image is more than 2 * image_size times longer than it is wide (1x3000 at 1024).
    """
    h, w = (int(v) for v in original_hw)
    if min(int(v) for v in resized_hw) >= 1:
        return
    long_side, short_side = max(h, w), min(h, w)
    side, other = ("height", "width") if h <= w else ("width", "height")
    need = -(-long_side // (2 * image_size))  # ceil(long / (2 * image_size)): rounds to >= 1
    raise InputError(
        f"{what}: got {h}x{w} pixels (height x width); resized so that its longest side is {image_size} "
        f"(the model's input size), its {side} would be {short_side} * {image_size} / {long_side} = "
        f"{short_side * image_size / long_side:.2f}, which rounds to 0 pixels; expected a {side} of at "
        f"least {need} pixels for a {other} of {long_side} (sides at most {2 * image_size} : 1)")


# -- modes ---------------------------------------------------------------------------------------

def _refuse_mode(im: Image.Image, what: str, why: str) -> InputError:
    accepted = ", ".join(m for m, d in MODE_DECISIONS.items() if not d.startswith("refused"))
    return InputError(
        f"{what}: got a Pillow image of mode {im.mode!r} ({im.format or 'in memory'}, "
        f"{im.width}x{im.height}): {why}; expected one of the modes {accepted}. Convert it to 8- or "
        "16-bit samples first (e.g. scale to 0..255 and send an HxWx3 uint8 RGB array)")


def _grey_to_rgb(grey8: np.ndarray) -> np.ndarray:
    return np.repeat(grey8[:, :, None], 3, axis=2)


def _sixteen_bit_to_rgb(values: np.ndarray) -> np.ndarray:
    """16-bit grey (any byte order) -> RGB uint8, keeping the high byte as cv2.imread does."""
    return _grey_to_rgb((values.astype(np.uint16) >> 8).astype(np.uint8))


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """OpenCV's icvCvt_CMYK2BGR_8u_C4C3R on Pillow's (non-inverted) CMYK samples."""
    c = cmyk.astype(np.int32)
    k_inv = 255 - c[..., 3:4]
    return (k_inv - ((c[..., :3] * k_inv) >> 8)).astype(np.uint8)


def _pixels(im: Image.Image, mode: Optional[str] = None) -> np.ndarray:
    """np.asarray(im.convert(mode) if mode else im), a strip of rows at a time.

    Pillow's array interface copies the whole image through one tobytes() (twice the array's
    size at its peak) and a whole-image convert() holds a second image: strips keep the peak
    near the PIL image plus the array (about 7 bytes/pixel for an RGB photo instead of 10).
    """
    rows = max(1, _STRIP_BYTES // max(1, im.width * 4))
    out = None
    for y in range(0, im.height, rows):
        strip = im.crop((0, y, im.width, min(y + rows, im.height)))
        part = np.asarray(strip.convert(mode) if mode else strip)
        if out is None:
            out = np.empty((im.height,) + part.shape[1:], part.dtype)
        out[y:y + len(part)] = part
    return out if out is not None else np.asarray(im.convert(mode) if mode else im)


def _mode_to_rgb(im: Image.Image, what: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return _pixels(im)
    if mode == "L":
        return _grey_to_rgb(_pixels(im))
    if mode == "1":
        return _grey_to_rgb(_pixels(im).astype(np.uint8) * np.uint8(255))
    if mode in ("P", "PA", "LA", "RGBA", "RGBa", "RGBX", "YCbCr", "HSV"):
        return _pixels(im, "RGB")
    if mode == "La":
        return _grey_to_rgb(_pixels(im, "LA")[..., 0])
    if mode == "LAB":
        try:
            return _pixels(im, "RGB")
        except ValueError:
            raise _refuse_mode(im, what, "this Pillow has no CIELab -> RGB conversion") from None
    if mode == "CMYK":
        return _cmyk_to_rgb(_pixels(im))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _sixteen_bit_to_rgb(_pixels(im))
    if mode == "I":
        values = _pixels(im)
        if im.format in _SIXTEEN_BIT_I_FORMATS and values.size and 0 <= values.min() and values.max() <= 65535:
            return _sixteen_bit_to_rgb(values)
        raise _refuse_mode(im, what, "32-bit (or signed) integer samples have no fixed range to map to 0..255")
    if mode == "F":
        raise _refuse_mode(im, what, "32-bit float samples have no fixed range to map to 0..255")
    raise _refuse_mode(im, what, "samrt has no decision for this mode")


# -- orientation ---------------------------------------------------------------------------------

def _orientation(im: Image.Image) -> int:
    """The EXIF Orientation (1..8) Pillow reads (EXIF, or XMP tiff:Orientation); 1 if none or broken."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, OSError, struct.error):
        return 1  # unreadable EXIF: shown unrotated, as browsers and OpenCV do
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """HxWx3 stored pixels -> displayed pixels (what PIL.ImageOps.exif_transpose does)."""
    oriented = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirror left-right
        3: lambda a: a[::-1, ::-1],  # rotate 180
        4: lambda a: a[::-1],  # mirror top-bottom
        5: lambda a: a.transpose(1, 0, 2),  # transpose
        6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
        8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
    }[orientation](rgb)
    return np.ascontiguousarray(oriented)


def rgb_from_pil(im: Image.Image, what: str = "image") -> np.ndarray:
    """A PIL image (opened or in memory) -> HxWx3 uint8 RGB, C-contiguous, in displayed orientation.

    Loads the pixels (the first frame of a multi-frame file), converts the mode as
    `MODE_DECISIONS` says, then applies the EXIF Orientation tag. Raises InputError for a mode
    that is refused. Does not check the pixel limit (`decode_image_bytes` and `load_image` do,
    before decoding).
    """
    im.load()
    rgb = _mode_to_rgb(im, what)
    return _orient(rgb, _orientation(im))


# -- decoding ------------------------------------------------------------------------------------

def _decode(source: Union[str, io.BytesIO], max_pixels: Optional[int], what: str, received: str) -> np.ndarray:
    try:
        with pillow_admits(max_pixels):
            with Image.open(source) as im:
                check_pixel_count(im.height, im.width, max_pixels, what)  # header only, nothing decoded yet
                im.load()
                rgb, orientation = _mode_to_rgb(im, what), _orientation(im)
        return _orient(rgb, orientation)  # after close(): the PIL image's memory is free again
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if max_pixels is not None:
            raise InputError(
                f"{what}: got an image of more than {2 * max(pillow_limit or 0, max_pixels)} pixels (its header "
                f"was refused before its size was read), expected at most {max_pixels} (samrt's pixel limit: "
                "--max-pixels on the server, max_pixels in the library)") from None
        raise InputError(
            f"{what}: got an image over Pillow's decompression-bomb limit ({e}); samrt sets no limit here "
            f"(max_pixels=None), so Pillow's PIL.Image.MAX_IMAGE_PIXELS = {pillow_limit} applies: pass "
            "max_pixels to admit larger images") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise InputError(f"{what}: cannot be read ({type(e).__name__}), expected an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        why = type(e).__name__ if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise InputError(f"{what}: got {received} that no image decoder reads ({why}), "
                         "expected an encoded image (JPEG, PNG, TIFF, WebP, BMP, ...)") from None


def decode_image_bytes(data: bytes, max_pixels: Optional[int] = None, what: str = "image_bytes") -> np.ndarray:
    """An encoded image (JPEG, PNG, TIFF, WebP, ...) -> HxWx3 uint8 RGB in displayed orientation.

    `max_pixels`: refuse images of more pixels (checked from the header, before decoding);
    None leaves only Pillow's own decompression-bomb limit. Raises InputError for undecodable
    bytes, a refused mode (see MODE_DECISIONS) or an image over the limit.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{what}: got {type(data).__name__}, expected bytes of an encoded image")
    data = bytes(data)
    return _decode(io.BytesIO(data), max_pixels, what, f"{len(data)} bytes")


def load_image(path: Union[str, "os.PathLike[str]"], max_pixels: Optional[int] = None) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB in displayed orientation (as decode_image_bytes)."""
    path = os.fspath(path)
    return _decode(path, max_pixels, path, "a file")


def probe_image(path: Union[str, "os.PathLike[str]"]) -> Tuple[int, int]:
    """(height, width) of an image file as displayed (EXIF orientation applied), from its header,
    after Pillow's integrity check of the file (`Image.verify`: PNG's chunk checksums, not a
    JPEG's data). A JPEG that does not end with its end-of-image marker is decoded at 1/8 scale
    (Pillow's draft mode reads every byte), so a truncated one is refused too; other data errors
    show when the pixels are decoded (`load_image`).
    Raises InputError when the file is not an image Pillow can read."""
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.verify()  # must come first after open (Pillow)
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "JPEG" and not _ends_with(path, b"\xff\xd9"):
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
                im.load()  # a truncated file: OSError "image file is truncated"
            if _orientation(im) in (5, 6, 7, 8):  # a quarter turn: the displayed image is transposed
                w, h = h, w
    except Exception as e:  # Pillow raises many kinds for bad data
        raise InputError(f"{path}: cannot be decoded as an image ({type(e).__name__}: {e})") from None
    return h, w


def _ends_with(path: str, tail: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - len(tail)))
        return f.read() == tail


# -- folders ---------------------------------------------------------------------------------
# File name endings samrt reads as images (compared in lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: Union[str, "os.PathLike[str]"]) -> List[str]:
    """The names (no directory part) of the images directly in `folder`, sorted by name: files
    whose suffix, in any case, is one of IMAGE_SUFFIXES; subfolders are not entered. The position
    in this list is the `image_id` that `samrt amg` gives an image. Nothing is decoded (a file
    with an image suffix may still fail in load_image). Raises InputError when `folder` is not a
    folder or has no image."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: not a folder; expected a folder of images")
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_SUFFIXES) and not os.path.isdir(os.path.join(folder, n)))
    if not names:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return names
