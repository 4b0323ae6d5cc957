"""Exports that training tools read (`samrt.app.exports`), checked by the consumers themselves:
Ultralytics' `convert_coco` and its YOLO dataset loader, pycocotools, OpenCV's rasterisation,
Label Studio's brush RLE decoder. Masks: the generated held-out scenes (shapes with holes, thin
stripes, small parts)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from samrt.app import exports
from samrt.scenes import eval_scenes

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the exports extra) is not installed")


@pytest.fixture(scope="module", autouse=True)
def _ultralytics_patches_stay_in_this_module():
    """Importing Ultralytics replaces PIL.Image.open (and cv2.imshow) process-wide: its version
    tries to pip-install pi-heif when a file is no image, so later tests of undecodable files in
    the same process got "needs the Python package 'pi_heif'". Restore them after this module."""
    import cv2

    saved = (Image.open, cv2.imshow)
    yield
    Image.open, cv2.imshow = saved


def _rle(mask):
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode()}


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(images folder, SA-1B documents, masks by file name) from 8 held-out scenes."""
    folder = tmp_path_factory.mktemp("scenes")
    docs, masks = [], {}
    for i, scene in enumerate(eval_scenes(8)):
        name = f"scene_{i}.png"
        Image.fromarray(scene.image).save(folder / name)
        ms = [np.asarray(m, bool) for m in scene.masks if np.asarray(m).any()]
        masks[name] = ms
        docs.append({"image": {"image_id": i, "file_name": name, "height": scene.image.shape[0],
                               "width": scene.image.shape[1]},
                     "annotations": [{"id": k, "segmentation": _rle(m), "area": int(m.sum()), "bbox": _bbox(m),
                                      "predicted_iou": 0.9} for k, m in enumerate(ms)]})
    return str(folder), docs, masks


def _iou(a, b):
    return float((a & b).sum() / max((a | b).sum(), 1))


def _filled(mask):
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask)


def test_coco_polygons_rasterise_back_to_the_masks_with_holes_filled(dataset, tmp_path):
    from pycocotools import mask as mask_utils

    folder, docs, masks = dataset
    path = exports.write_exports(["coco"], docs, str(tmp_path), folder)["coco"]
    coco = json.load(open(path))
    assert coco["categories"] == [{"id": 1, "name": "object"}]
    assert len(coco["images"]) == len(docs) and coco["info"]["objects_without_polygon"] == 0
    anns = iter(coco["annotations"])  # in document order (none was left out)
    ious = []
    for doc in docs:
        h, w = doc["image"]["height"], doc["image"]["width"]
        for src in masks[doc["image"]["file_name"]]:
            ann = next(anns)
            assert ann["image_id"] == doc["image"]["image_id"] and ann["area"] == int(src.sum())
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
            back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))).astype(bool)
            ious.append(_iou(back, _filled(src)))
    # Measured on these 41 masks: mean IoU 0.911, worst 0.756 (a 41-pixel mask) against the
    # hole-filled masks, through pycocotools' polygon rasterisation; the loss is at the boundary.
    assert len(ious) > 20 and np.mean(ious) >= 0.89 and min(ious) >= 0.7, (np.mean(ious), min(ious))


def test_ultralytics_convert_coco_reads_the_polygons_and_refuses_rle(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics_settings"))
    converter = pytest.importorskip("ultralytics.data.converter", reason="ultralytics (dev extra) is not installed")
    folder, docs, _ = dataset
    exports.write_exports(["coco"], docs, str(tmp_path / "out"), folder)
    converter.convert_coco(labels_dir=str(tmp_path / "out" / "coco"), save_dir=str(tmp_path / "converted"),
                           use_segments=True)
    labels = tmp_path / "converted" / "labels" / "instances"
    files = sorted(os.listdir(labels))
    assert files == sorted(d["image"]["file_name"].replace(".png", ".txt") for d in docs)
    for doc in docs:
        lines = (labels / doc["image"]["file_name"].replace(".png", ".txt")).read_text().splitlines()
        assert len(lines) == len(doc["annotations"])
        assert all(line.split()[0] == "0" and len(line.split()) >= 7 for line in lines)

    rle = tmp_path / "rle"
    rle.mkdir()  # the same file with the masks as COCO RLE, as samrt wrote it before: Ultralytics cannot read it
    coco = json.load(open(tmp_path / "out" / "coco" / "instances.json"))
    for ann, src in zip(coco["annotations"], [a for d in docs for a in d["annotations"]]):
        ann["segmentation"] = src["segmentation"]
    (rle / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(Exception):
        converter.convert_coco(labels_dir=str(rle), save_dir=str(tmp_path / "converted_rle"), use_segments=True)


def test_yolo_layout_loads_in_ultralytics_and_rasterises_back_to_the_masks(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics_settings"))
    pytest.importorskip("ultralytics", reason="ultralytics (dev extra) is not installed")
    from ultralytics.data.utils import polygon2mask, verify_image_label

    folder, docs, masks = dataset
    data_yaml = exports.write_exports(["yolo"], docs, str(tmp_path), folder)["yolo"]
    root = os.path.dirname(data_yaml)
    assert open(data_yaml).read().splitlines()[1:4] == ["train: images", "val: images", "names:"]
    ious = []
    for doc in docs:
        name, (h, w) = doc["image"]["file_name"], (doc["image"]["height"], doc["image"]["width"])
        label = os.path.join(root, "labels", name.replace(".png", ".txt"))
        # Ultralytics' own check of an image and its label file (what its dataset loader runs)
        out = verify_image_label((os.path.join(root, "images", name), label, "", False, 1, 0, 0, False))
        im_file, lb, shape, segments, _, nm, nf, ne, nc, msg = out
        assert im_file and nf == 1 and nc == 0 and msg == "", msg
        assert len(segments) == len(doc["annotations"]) == len(lb)
        for seg, src in zip(segments, masks[name]):
            back = polygon2mask((h, w), [(seg * (w, h)).reshape(-1)])  # Ultralytics' own rasterisation
            ious.append(_iou(back.astype(bool), _filled(src)))
    # Measured on these 41 masks: mean IoU 0.970, worst 0.877 against the hole-filled masks.
    assert np.mean(ious) >= 0.95 and min(ious) >= 0.85, (np.mean(ious), min(ious))


def test_label_studio_tasks_carry_the_exact_masks_in_brush_rle(dataset, tmp_path):
    pytest.importorskip("label_studio_converter", reason="label-studio-converter (label-studio extra) is not installed")
    from samrt.app.label_studio.regions import decode_brush_rle

    folder, docs, masks = dataset
    path = exports.write_exports(["label-studio"], docs, str(tmp_path), folder, image_url="http://images/")["label-studio"]
    tasks = json.load(open(path))
    assert [t["data"]["image"] for t in tasks] == [f"http://images/{d['image']['file_name']}" for d in docs]
    for task, doc in zip(tasks, docs):
        (pred,) = task["predictions"]
        assert len(pred["result"]) == len(doc["annotations"])
        for region, src in zip(pred["result"], masks[doc["image"]["file_name"]]):
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["object"]
            assert (region["from_name"], region["to_name"]) == ("mask", "image")
            back = decode_brush_rle(region["value"]["rle"], region["original_height"], region["original_width"])
            np.testing.assert_array_equal(back, src)  # brush RLE is lossless


def test_formats_are_checked():
    assert exports.parse_formats("sa1b") == [] and exports.parse_formats("coco,yolo") == ["coco", "yolo"]
    with pytest.raises(Exception, match="got pascal"):
        exports.parse_formats("coco,pascal")
    square = np.zeros((10, 10), bool)
    square[2:6, 3:8] = True
    (poly,) = exports.mask_polygons(square)
    np.testing.assert_allclose(sorted(map(tuple, poly)), [(3.5, 2.5), (3.5, 5.5), (7.5, 2.5), (7.5, 5.5)])
    dot = np.zeros((10, 10), bool)
    dot[4, 4] = True
    assert exports.mask_polygons(dot) == []  # one pixel: no polygon
