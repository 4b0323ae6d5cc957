"""`samrt label-studio` and the Label Studio export against a real Label Studio (PyPI
`label-studio`, SQLite, started here from its own virtual environment, `.venv-label-studio`,
which `make install` creates): a project with samrt's SAM labelling config, the backend
connected through Label Studio's API, images uploaded to Label Studio, an interactive prediction
asked through Label Studio's own API and stored as an annotation, pre-annotation through Label
Studio's "retrieve predictions" action, and `samrt amg --format label-studio` tasks imported.

Slow (Label Studio's first start migrates its database: a minute or two here)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ...conftest import random_image

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.label_studio]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LABEL_STUDIO = os.path.join(ROOT, ".venv-label-studio", "bin", "label-studio")
TOKEN = "0123456789abcdef0123456789abcdef01234567"
requests = pytest.importorskip("requests", reason="requests (with the label-studio extra) is not installed")
pytest.importorskip("label_studio_converter", reason="label-studio-converter (the label-studio extra) is not installed")

from samrt.app.label_studio.regions import LABEL_CONFIG, decode_brush_rle  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, seconds: float, proc: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode}); log {log}:\n{open(log).read()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code in (200, 401):
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url}: not up after {seconds:.0f} s; log {log}:\n{open(log).read()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this test started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """(Label Studio's URL, the local-files root) of a fresh Label Studio on loopback."""
    if not os.access(LABEL_STUDIO, os.X_OK):
        pytest.skip(f"no {LABEL_STUDIO}: `make install` creates Label Studio's own virtual environment")
    root = tmp_path_factory.mktemp("label_studio")
    files = root / "files"
    files.mkdir()
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(root / "base"), "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false", "ML_BLOCK_LOCAL_IP": "false",  # the backend runs on 127.0.0.1
           "SSRF_PROTECTION_ENABLED": "false", "LOCAL_FILES_SERVING_ENABLED": "true",
           "LOCAL_FILES_DOCUMENT_ROOT": str(files), "DJANGO_DB": "sqlite"}
    log = str(root / "label-studio.log")
    proc = subprocess.Popen([LABEL_STUDIO, "start", "--no-browser", "--data-dir", str(root / "data"), "-p", str(port),
                             "--internal-host", "127.0.0.1", "--username", "admin@example.com", "--password",
                             "samrt-test-password", "--user-token", TOKEN, "--enable-legacy-api-token"],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/health", 600, proc, log)
        yield url, files
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def backend(label_studio, server, tmp_path_factory):
    """`samrt label-studio` as a user starts it, with Label Studio's URL and key in its environment."""
    url, _ = label_studio
    port = _free_port()
    log = str(tmp_path_factory.mktemp("backend") / "samrt-label-studio.log")
    env = {**os.environ, "LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "samrt.app.cli", "label-studio", "--url", server.grpc_url,
                             "--port", str(port)], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait(f"http://127.0.0.1:{port}/health", 120, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _api(base, method, path, status=(200, 201), **kw):
    r = requests.request(method, base + path, headers={"Authorization": f"Token {TOKEN}"}, timeout=300, **kw)
    assert r.status_code in status, (r.status_code, r.text[:2000])
    return r.json() if r.content else None


def _png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _best(answer):
    return answer["masks"][0, int(np.argmax(answer["iou_predictions"][0]))]


def test_label_studio_asks_samrt_for_masks_and_stores_them(label_studio, backend, server):
    from samrt.client import SamClient

    ls, _ = label_studio
    project = _api(ls, "POST", "/api/projects", json={"title": "samrt SAM", "label_config": LABEL_CONFIG})["id"]
    images = {f"photo{i}.png": random_image(72 + 16 * i, 96, seed=100 + i) for i in range(2)}
    imported = _api(ls, "POST", f"/api/projects/{project}/import",
                    files=[(f"file{i}", (name, _png(im), "image/png"))  # one field per file
                           for i, (name, im) in enumerate(images.items())])
    assert imported["task_count"] == 2
    tasks = _api(ls, "GET", f"/api/tasks?project={project}")["tasks"]
    assert all(t["data"]["image"].startswith("/data/upload/") for t in tasks)  # stored in Label Studio: needs the key
    ml = _api(ls, "POST", "/api/ml", json={"url": backend, "project": project, "title": "samrt",
                                           "is_interactive": True})
    assert _api(ls, "GET", f"/api/ml/{ml['id']}")["state"] == "CO"  # connected: /health and /setup answered

    task = next(t for t in tasks if t["data"]["image"].endswith("photo1.png"))
    image = images["photo1.png"]
    h, w = image.shape[:2]
    click = {"type": "keypointlabels", "from_name": "click", "to_name": "image", "original_width": w,
             "original_height": h, "is_positive": True,
             "value": {"x": 100.0 * 50 / w, "y": 100.0 * 40 / h, "width": 1.0, "keypointlabels": ["object"]}}
    answer = _api(ls, "POST", f"/api/ml/{ml['id']}/interactive-annotating", json={"task": task["id"],
                                                                                 "context": {"result": [click]}})
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    with SamClient(server.grpc_url) as c:
        direct = c.decode(c.encode(image).image_id, [[[50, 40]]], [[1]])
    mask = decode_brush_rle(region["value"]["rle"], h, w)
    np.testing.assert_array_equal(mask, _best(direct))

    # the region as an annotation: Label Studio validates and stores it, and gives it back unchanged
    _api(ls, "POST", f"/api/tasks/{task['id']}/annotations", json={"result": answer["data"]["result"]})
    (stored,) = _api(ls, "GET", f"/api/tasks/{task['id']}/annotations")
    (kept,) = stored["result"]
    assert kept["type"] == "brushlabels" and kept["value"]["brushlabels"] == ["object"]
    np.testing.assert_array_equal(decode_brush_rle(kept["value"]["rle"], kept["original_height"],
                                                   kept["original_width"]), _best(direct))

    # pre-annotation, asked by the project (extra_params), through Label Studio's "retrieve predictions"
    amg = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    # (Label Studio 1.23.2 checks a PATCH by calling the backend with the fields sent: url and project go along)
    _api(ls, "PATCH", f"/api/ml/{ml['id']}", json={"url": backend, "project": project,
                                                   "extra_params": {"preannotate": True, **amg}})
    _api(ls, "POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
         json={"selectedItems": {"all": False, "included": [t["id"] for t in tasks]}})
    for t in tasks:
        (prediction,) = _api(ls, "GET", f"/api/predictions?task={t['id']}")
        with SamClient(server.grpc_url) as c:
            records = c.amg(images[os.path.basename(t["data"]["image"]).split("-", 1)[-1]], amg)
        assert prediction["model_version"] == "samrt" and len(prediction["result"]) == len(records) > 0


def test_label_studio_imports_samrts_predictions(label_studio, backend, server, tmp_path):
    """`samrt amg --format label-studio` tasks, images in Label Studio's local files: imported with
    their predictions, which decode to the exact masks of the SA-1B files; a click on such a task
    (the backend fetches /data/local-files/ with the key) answers the SDK's mask."""
    from samrt.app.cli import main
    from samrt.app.exports import rle_mask
    from samrt.client import SamClient
    from samrt.imageio import load_image

    ls, files = label_studio
    folder = files / "scenes"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(random_image(64, 80 + 8 * i, seed=120 + i)).save(folder / f"im{i}.png")
    out = tmp_path / "masks"
    assert main(["amg", str(folder), "--out", str(out), "--points-per-side", "4", "--pred-iou-thresh", "0",
                 "--stability-score-thresh", "0", "--format", "label-studio", "--url", server.grpc_url]) == 0
    project = _api(ls, "POST", "/api/projects", json={"title": "samrt import", "label_config": LABEL_CONFIG})["id"]
    _api(ls, "POST", "/api/storages/localfiles", json={"project": project, "path": str(folder), "title": "scenes",
                                                       "use_blob_urls": True})  # Label Studio serves files it has storage for
    tasks = json.load(open(out / "label-studio" / "tasks.json"))
    assert _api(ls, "POST", f"/api/projects/{project}/import", json=tasks)["task_count"] == 2
    for t in _api(ls, "GET", f"/api/tasks?project={project}")["tasks"]:
        name = t["data"]["image"].rsplit("/", 1)[-1]
        assert t["data"]["image"] == f"/data/local-files/?d=scenes/{name}"
        served = requests.get(ls + t["data"]["image"], headers={"Authorization": f"Token {TOKEN}"}, timeout=30)
        assert served.status_code == 200 and served.content == (folder / name).read_bytes()
        (prediction,) = _api(ls, "GET", f"/api/predictions?task={t['id']}")
        doc = json.load(open(out / name.replace(".png", ".json")))
        assert len(prediction["result"]) == len(doc["annotations"]) > 0
        for region, record in zip(prediction["result"], doc["annotations"]):
            back = decode_brush_rle(region["value"]["rle"], region["original_height"], region["original_width"])
            np.testing.assert_array_equal(back, rle_mask(record["segmentation"]))

    ml = _api(ls, "POST", "/api/ml", json={"url": backend, "project": project, "title": "samrt", "is_interactive": True})
    t = _api(ls, "GET", f"/api/tasks?project={project}")["tasks"][0]
    image = load_image(str(folder / t["data"]["image"].rsplit("/", 1)[-1]))
    h, w = image.shape[:2]
    box = {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": w, "original_height": h,
           "value": {"x": 10.0, "y": 10.0, "width": 60.0, "height": 70.0, "rotation": 0, "rectanglelabels": ["object"]}}
    answer = _api(ls, "POST", f"/api/ml/{ml['id']}/interactive-annotating", json={"task": t["id"],
                                                                                 "context": {"result": [box]}})
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    with SamClient(server.grpc_url) as c:
        direct = c.decode(c.encode(image).image_id, [[[0.1 * w, 0.1 * h], [0.7 * w, 0.8 * h]]], [[2, 3]],
                          multimask_output=False)
    np.testing.assert_array_equal(decode_brush_rle(region["value"]["rle"], h, w), direct["masks"][0, 0])
