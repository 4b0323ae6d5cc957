"""A folder of generated scenes (with ground truth), plus files that are not images."""

import asyncio
import os

import numpy as np
import pytest
from PIL import Image

from samrt.scenes import scene_for_index

SCENES = (0, 1, 2)   # scene 0 has a large rectangle (36k of its 146k pixels)


def write_scene_folder(folder: str, indices=SCENES) -> dict:
    """PNG per scene (scene_XX.png), a text file and a broken PNG; returns {name: Scene}."""
    os.makedirs(folder, exist_ok=True)
    scenes = {}
    for i in indices:
        scene = scene_for_index(i)
        name = f"scene_{i:02d}.png"
        Image.fromarray(scene.image).save(os.path.join(folder, name))
        scenes[name] = scene
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image")
    with open(os.path.join(folder, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return scenes


@pytest.fixture
def scene_folder(tmp_path):
    folder = str(tmp_path / "photos")
    return folder, write_scene_folder(folder)


def largest_object(scene) -> np.ndarray:
    """The scene's largest whole object (a simple shape on the scenes used here)."""
    wholes = [m for m, p in zip(scene.masks, scene.parent) if p < 0]
    return max(wholes, key=lambda m: m.sum())


def with_client(app, fn):
    """Run `await fn(client)` with aiohttp's test client on `app` (a fresh event loop)."""
    from aiohttp.test_utils import TestClient, TestServer

    async def main():
        async with TestClient(TestServer(app)) as client:
            return await fn(client)

    return asyncio.run(main())
