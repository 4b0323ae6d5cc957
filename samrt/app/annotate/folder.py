"""The folder being annotated: which files are images, which are skipped and why, and the only
way the app reaches a file (by its listed name, never by a path from a request)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np


from samrt import imageio
from samrt.errors import InputError
from samrt.imageio import IMAGE_SUFFIXES

__all__ = ["ImageEntry", "Skipped", "ImageFolder"]


@dataclass(frozen=True)
class ImageEntry:
    index: int
    name: str        # file name inside the folder (no directory part)
    width: int       # after EXIF orientation, as the browser shows it
    height: int

    @property
    def stem(self) -> str:
        return os.path.splitext(self.name)[0]


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


class ImageFolder:
    """The images of one folder (not its subfolders), sorted by name.

    A file is skipped, with its reason, when its suffix is not an image suffix, when it cannot
    be decoded (`samrt.imageio.probe_image`: header, PNG checksums, a truncated JPEG), when it is
    a link leaving the folder, or when another image has the same stem (both would write
    `<stem>.json`). A listed image whose pixels then fail to decode (`load`) joins the skipped
    files and is marked broken; it keeps its index. Names starting with '.' are ignored."""

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            raise InputError(f"{path}: not a folder; expected a folder of images")
        self.path = os.path.realpath(path)
        self.images: List[ImageEntry] = []
        self.skipped: List[Skipped] = []
        self._by_name: Dict[str, ImageEntry] = {}
        self._broken: Dict[int, str] = {}
        stems = set()
        for name in sorted(os.listdir(self.path)):
            if name.startswith("."):
                continue
            full = os.path.join(self.path, name)
            if os.path.isdir(full):
                continue
            reason = self._check(full, name)
            stem = os.path.splitext(name)[0]
            if reason is None and stem in stems:
                reason = f"another image has the stem {stem!r} (its annotations go to {stem}.json)"
            if reason is not None:
                self.skipped.append(Skipped(name, reason))
                continue
            stems.add(stem)
            h, w = imageio.probe_image(full)
            entry = ImageEntry(len(self.images), name, w, h)
            self.images.append(entry)
            self._by_name[name] = entry

    def _check(self, full: str, name: str) -> Optional[str]:
        if os.path.dirname(os.path.realpath(full)) != self.path:
            return "a link to a file outside the folder"
        if not name.lower().endswith(IMAGE_SUFFIXES):
            return f"not an image: suffix {os.path.splitext(name)[1] or '(none)'!r}, expected one of {', '.join(IMAGE_SUFFIXES)}"
        try:
            imageio.probe_image(full)
        except InputError as e:
            return str(e).split(": ", 1)[-1]
        return None

    def __len__(self) -> int:
        return len(self.images)

    def entry(self, index: int) -> ImageEntry:
        if not isinstance(index, int) or not 0 <= index < len(self.images):
            raise InputError(f"image index: got {index!r}, expected 0..{len(self.images) - 1}")
        return self.images[index]

    def by_name(self, name: str) -> Optional[ImageEntry]:
        """The listed image called `name`, or None: a name with a directory part, '..', or any
        file that is not a listed image is never resolved."""
        return self._by_name.get(name)

    def file_path(self, entry: ImageEntry) -> str:
        return os.path.join(self.path, entry.name)

    def load(self, entry: ImageEntry) -> np.ndarray:
        """HxWx3 uint8 RGB, EXIF orientation applied (as the browser shows the file). InputError
        for pixels that cannot be decoded: the image is marked broken and listed as skipped."""
        try:
            return imageio.load_image(self.file_path(entry))
        except InputError as e:
            reason = str(e).split(": ", 1)[-1]
            self.mark_broken(entry, reason)
            raise InputError(f"{entry.name}: {reason}; it is listed under the skipped files now") from None

    def mark_broken(self, entry: ImageEntry, reason: str) -> None:
        if entry.index not in self._broken:
            self._broken[entry.index] = reason
            self.skipped.append(Skipped(entry.name, reason))

    def is_broken(self, index: int) -> Optional[str]:
        """Why image `index` could not be decoded, or None."""
        return self._broken.get(index)
