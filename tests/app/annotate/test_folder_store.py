"""samrt.app.annotate without a model server: the folder scan, the output files, path safety."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from samrt.app.annotate.app import create_app
from samrt.app.annotate.folder import ImageFolder
from samrt.app.annotate.masks import from_runs, to_runs
from samrt.app.annotate.store import AnnotationStore
from samrt.errors import InputError, SamrtError
from samrt.masks import coco_bbox, mask_to_rle, rle_to_mask

from .conftest import with_client


def test_folder_lists_images_and_says_why_others_are_skipped(scene_folder, tmp_path):
    folder, scenes = scene_folder
    os.symlink(str(tmp_path / "outside.png"), os.path.join(folder, "link.png"))
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    f = ImageFolder(folder)
    assert [e.name for e in f.images] == sorted(scenes)
    reasons = {k.name: k.reason for k in f.skipped}
    assert set(reasons) == {"notes.txt", "broken.png", "link.png"}
    assert reasons["notes.txt"].startswith("not an image: suffix '.txt'")
    assert reasons["broken.png"].startswith("cannot be decoded as an image")
    assert reasons["link.png"] == "a link to a file outside the folder"
    e = f.images[0]
    assert (e.height, e.width) == scenes[e.name].image.shape[:2]
    np.testing.assert_array_equal(f.load(e), scenes[e.name].image)
    for bad in ("../photos/scene_00.png", "notes.txt", "link.png", "/etc/passwd", "..", ""):
        assert f.by_name(bad) is None
    with pytest.raises(InputError, match="image index: got 9, expected 0..2"):
        f.entry(9)


def test_masks_round_trip():
    rng = np.random.default_rng(0)
    for first in (False, True):
        m = rng.uniform(size=(7, 5)) > 0.5
        m[0, 0] = first
        np.testing.assert_array_equal(from_runs(to_runs(m), 7, 5), m)
        np.testing.assert_array_equal(rle_to_mask(mask_to_rle(m)), m)
    m = np.zeros((6, 8), bool)
    m[2:4, 3:7] = True
    assert coco_bbox(m) == [3.0, 2.0, 4.0, 2.0]


def _object(mask):
    return {"segmentation": mask_to_rle(mask), "area": int(mask.sum()), "bbox": coco_bbox(mask), "predicted_iou": 0.9,
            "point_coords": [[1.0, 1.0]], "stability_score": None, "crop_box": [0, 0, mask.shape[1], mask.shape[0]],
            "prompts": {"points": [[1.0, 1.0, 1]], "box": None}, "source": "manual", "candidate": 0, "clicks": 3,
            "seconds": 4.5}


def test_store_writes_each_image_and_continues_where_it_stopped(scene_folder, tmp_path):
    folder, scenes = scene_folder
    f = ImageFolder(folder)
    out = str(tmp_path / "out")
    store = AnnotationStore(out, f)
    assert store.resume_index() == 0
    e0, e1 = f.images[0], f.images[1]
    mask = np.zeros((e0.height, e0.width), bool)
    mask[10:20, 5:9] = True
    store.add(e0, _object(mask))
    store.add(e0, {**_object(mask), "source": "prefill", "clicks": 0, "seconds": None})
    store.set_last(e1)
    with open(os.path.join(out, "scene_00.json")) as fh:
        doc = json.load(fh)
    assert doc["image"] == {"image_id": 0, "file_name": "scene_00.png", "width": e0.width, "height": e0.height}
    assert [a["id"] for a in doc["annotations"]] == [0, 1]
    np.testing.assert_array_equal(rle_to_mask(doc["annotations"][0]["segmentation"]), mask)
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]  # atomic writes leave no temporary file

    again = AnnotationStore(out, ImageFolder(folder))   # reopening the folder
    assert len(again.objects(e0)) == 2 and again.resume_index() == 1
    again.delete(e0, 0)
    assert [a["id"] for a in AnnotationStore(out, f).objects(e0)] == [1]
    stats = again.stats()
    assert stats["objects"] == 1 and stats["prefill_objects"] == 1 and stats["masks_per_image"] == 1.0
    store.add(e1, _object(np.ones((e1.height, e1.width), bool)))
    assert store.stats()["seconds_per_mask"] == 4.5 and store.stats()["clicks_per_mask"] == 3.0

    coco = store.export_coco()
    from pycocotools.coco import COCO

    api = COCO(coco["path"])
    assert coco["images"] == 3 and len(api.getAnnIds()) == coco["annotations"] == 3
    np.testing.assert_array_equal(api.annToMask(api.loadAnns(api.getAnnIds(imgIds=[0]))[0]), mask)

    # the exports of samrt.app.exports, over the annotated images only (e0: 2 objects, e1: 1)
    polygons = store.export("coco")
    assert polygons == {"path": os.path.join(out, "coco", "instances.json"), "images": 2, "annotations": 3}
    api = COCO(polygons["path"])
    back = api.annToMask(api.loadAnns(api.getAnnIds(imgIds=[0]))[0]).astype(bool)  # through the boundary pixels' centres
    assert (back & ~mask).sum() == 0 and (back & mask).sum() / mask.sum() >= 0.6  # a 10x4 rectangle loses its rim
    yolo = store.export("yolo")
    assert yolo["path"] == os.path.join(out, "yolo", "data.yaml")
    assert len(open(os.path.join(out, "yolo", "labels", "scene_00.txt")).read().splitlines()) == 2
    assert os.path.isfile(os.path.join(out, "yolo", "images", "scene_00.png"))
    assert store.export("label-studio")["annotations"] == 3


def test_store_refuses_a_folder_it_did_not_write(scene_folder, tmp_path):
    folder, _ = scene_folder
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.json").write_text("{}")
    with pytest.raises(SamrtError, match="not written by samrt"):
        AnnotationStore(str(other), ImageFolder(folder))
    with pytest.raises(SamrtError, match="the image folder itself"):
        AnnotationStore(folder, ImageFolder(folder))
    assert (other / "thesis.json").read_text() == "{}"


def test_app_serves_only_the_folders_images(scene_folder, tmp_path):
    folder, scenes = scene_folder
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT")
    app = create_app(folder, str(tmp_path / "out"), "127.0.0.1:1")   # no model server needed here
    from yarl import URL

    async def run(client):
        r = await client.get("/images/scene_00.png")
        assert r.status == 200
        assert await r.read() == open(os.path.join(folder, "scene_00.png"), "rb").read()
        refused = ["/images/notes.txt", "/images/broken.png", "/images/..%2Fsecret.txt", "/images/%2E%2E%2Fsecret.txt",
                   "/images/..%2F..%2Fetc%2Fpasswd", "/images/%2Fetc%2Fpasswd", "/static/..%2Fapp.py"]
        for path in refused:
            r = await client.get(URL(path, encoded=True))
            assert r.status == 403, path
            assert "TOP-SECRET" not in await r.text()
        for path in ["/images/../secret.txt", "/images/../../etc/passwd", "/static/../app.py"]:
            r = await client.get(URL(path, encoded=True))   # sent as is, not normalised by the client
            assert r.status in (403, 404), path
            assert "TOP-SECRET" not in await r.text() and "def " not in await r.text()
        listing = await (await client.get("/api/images")).json()
        assert [im["name"] for im in listing["images"]] == sorted(scenes)
        assert {k["name"] for k in listing["skipped"]} == {"notes.txt", "broken.png"}
        assert (await client.get("/")).status == 200 and (await client.get("/static/app.js")).status == 200
        cfg = await (await client.get("/api/config")).json()
        assert cfg["style"]["foreground"]["shape"] != cfg["style"]["background"]["shape"]

    with_client(app, run)


def test_app_refuses_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no images to annotate \\(1 files skipped"):
        create_app(str(tmp_path / "empty"), str(tmp_path / "out"), "127.0.0.1:1")


def test_the_app_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, samrt.app.annotate; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_sessions_beyond_the_limit_forget_the_least_recently_used(scene_folder, tmp_path):
    import asyncio

    from samrt.app.annotate.service import MAX_SESSIONS, AnnotationService

    folder, _ = scene_folder
    f = ImageFolder(folder)

    async def run():
        svc = AnnotationService(f, AnnotationStore(str(tmp_path / "out"), f), client=None)
        first, second = svc.new_session(), svc.new_session()
        svc.session(first.id)   # used: now the most recent
        for _ in range(MAX_SESSIONS - 1):
            svc.new_session()
        assert svc.session(first.id) is first
        with pytest.raises(KeyError, match="unknown"):
            svc.session(second.id)

    asyncio.run(run())


def test_the_app_answers_only_to_its_own_address(scene_folder, tmp_path):
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1 sends its own name as Host."""
    from samrt.app.annotate.app import host_allowed

    folder, _ = scene_folder
    app = create_app(folder, str(tmp_path / "out"), "127.0.0.1:1")

    async def run(client):
        assert (await client.get("/api/images", headers={"Host": "localhost:8080"})).status == 200
        for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example:8080"):
            r = await client.get("/api/images", headers={"Host": host})
            assert r.status == 403 and "not this app's address" in await r.text(), host
        assert (await client.post("/api/sessions", headers={"Host": "evil.example"})).status == 403

    with_client(app, run)
    assert host_allowed("127.0.0.1:8080", "127.0.0.1") and host_allowed("[::1]:8080", "localhost")
    assert not host_allowed(None, "127.0.0.1") and not host_allowed("attacker.test", "::1")
    assert host_allowed("192.168.1.20:8080", "0.0.0.0") and not host_allowed("attacker.test:8080", "0.0.0.0")
    assert host_allowed("annotate.lan:8080", "annotate.lan") and not host_allowed("127.0.0.1", "annotate.lan")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664)])
def test_output_files_are_ordinary_files_for_the_users_umask(scene_folder, tmp_path, umask, mode):
    folder, _ = scene_folder
    f = ImageFolder(folder)
    old = os.umask(umask)
    try:
        store = AnnotationStore(str(tmp_path / "out"), f)
        store.add(f.images[0], _object(np.ones((f.images[0].height, f.images[0].width), bool)))
        store.export_coco()
    finally:
        os.umask(old)
    for name in ("scene_00.json", ".samrt-annotate.json", "instances.json"):
        assert os.stat(tmp_path / "out" / name).st_mode & 0o777 == mode, name


def test_undecodable_images_are_skipped_with_the_reason(scene_folder, tmp_path):
    import io

    folder, scenes = scene_folder
    jpeg = io.BytesIO()
    Image.fromarray(scenes["scene_00.png"].image).save(jpeg, format="JPEG")
    with open(os.path.join(folder, "cut.jpg"), "wb") as fh:   # a copy that stopped half way
        fh.write(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    with open(os.path.join(folder, "whole.jpg"), "wb") as fh:
        fh.write(jpeg.getvalue())
    f = ImageFolder(folder)
    reasons = {k.name: k.reason for k in f.skipped}
    assert "truncated" in reasons["cut.jpg"] and "whole.jpg" in [e.name for e in f.images]
    # pixels that fail to decode later (here: the file changed after the scan) move the image to skipped
    entry = f.by_name("scene_01.png")
    with open(f.file_path(entry), "r+b") as fh:
        fh.seek(60)
        fh.write(b"\0" * 200)
    with pytest.raises(InputError, match="scene_01.png: .*listed under the skipped files"):
        f.load(entry)
    assert f.is_broken(entry.index) and "scene_01.png" in [k.name for k in f.skipped]
    assert f.by_name("scene_01.png") is entry   # it keeps its index


def test_esc_starts_the_object_over_but_its_time_and_clicks_go_on(scene_folder, tmp_path):
    from samrt.app.annotate.session import Session, Step, multimask_output

    s = Session()
    s.push(s.next_step(point=(1, 2, 1)))
    started = s.started
    s.clear()
    assert s.step.points == [] and s.clicks == 1 and s.started == started and s.working
    s.push(s.next_step(point=(3, 4, 1)))
    assert s.clicks == 2
    s.reset()
    assert s.clicks == 0 and not s.working
    # SAM's protocol: three candidates for a lone click only
    assert multimask_output([(1, 2, 1)], None) and not multimask_output([(1, 2, 1), (3, 4, 0)], None)
    assert not multimask_output([], (0, 0, 5, 5)) and not multimask_output([(1, 2, 1)], (0, 0, 5, 5))
    assert Step(points=[(1, 2, 1)]).multimask_output

    folder, _ = scene_folder
    f = ImageFolder(folder)
    store = AnnotationStore(str(tmp_path / "out"), f)
    store.add(f.images[0], _object(np.ones((f.images[0].height, f.images[0].width), bool)))   # 3 clicks, 4.5 s
    store.add_abandoned(2.5, 3)
    st = AnnotationStore(str(tmp_path / "out"), ImageFolder(folder)).stats()   # kept in the state file
    assert st["abandoned_attempts"] == 1 and st["seconds_per_mask"] == 7.0 and st["clicks_per_mask"] == 6.0
