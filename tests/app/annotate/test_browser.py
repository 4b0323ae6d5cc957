"""`samrt annotate` end to end: the command, the embedded trained model on tritonserver, and the
page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is
ever downloaded)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from samrt.app.annotate.masks import from_runs
from samrt.artifacts import default_checkpoint
from samrt.masks import mask_iou, rle_to_mask
from samrt.model_repository.server import free_port

from .conftest import largest_object, write_scene_folder

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MASK_IOU = 0.8   # the accepted mask against the scene's ground truth, for a large simple object

try:
    import playwright.sync_api  # noqa: F401
    HAVE_PLAYWRIGHT = True
except ImportError:
    HAVE_PLAYWRIGHT = False

pytestmark = [pytest.mark.triton,
              pytest.mark.skipif(default_checkpoint() is None, reason="no embedded samrt_small checkpoint")]


def _get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


class Annotate:
    """`samrt annotate ...` as a subprocess, ready when its page answers."""

    def __init__(self, args, timeout=180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "samrt.app.cli", "annotate", *args, "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"samrt annotate exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                _get(self.url + "/api/config")
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"samrt annotate not answering after {timeout} s")

    def stop(self):
        """Ctrl-C, as a user would; returns (exit code, stdout, stderr)."""
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM} (Debian's chromium; `make install` adds it)")
@pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="playwright (python package) not installed")
def test_the_page_in_chromium_click_pick_accept_next(small_server, tmp_path):
    from playwright.sync_api import sync_playwright

    folder, out = str(tmp_path / "photos"), str(tmp_path / "out")
    scenes = write_scene_folder(folder)
    gt = largest_object(scenes["scene_00.png"])   # a rectangle of 36k pixels
    app = Annotate([folder, "--out", out, "--url", small_server.grpc_url])
    errors = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 820})
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(app.url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            page.wait_for_selector("#view[data-image-index='0']")
            assert "2" in page.inner_text("#skipped-count")   # notes.txt and broken.png, listed as skipped

            def click(x, y, **kw):
                box = page.locator("#view").bounding_box()
                h, w = gt.shape
                with page.expect_response(lambda r: r.url.endswith("/prompt")) as resp:
                    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h, **kw)
                return resp.value.json()

            from samrt.scenes import centre_point

            state = click(*centre_point(gt))
            page.wait_for_selector("#view[data-mask-drawn=true]")
            assert page.locator("#candidates button").count() == 3
            ious = [mask_iou(from_runs(c["runs"], *gt.shape), gt) for c in state["candidates"]]
            k = int(np.argmax(ious))                # the annotator picks the candidate that is the object
            page.keyboard.press(str(k + 1))
            page.wait_for_selector(f"#view[data-selected='{k}']")
            assert re.search(r"click \d+ ms", page.inner_text("#latency"))
            page.keyboard.press("Enter")
            page.wait_for_function("document.querySelectorAll('#objects li').length === 1")
            page.wait_for_selector("#view[data-mask-drawn=false]")
            page.screenshot(path=str(tmp_path / "annotate.png"))

            with open(os.path.join(out, "scene_00.json")) as f:
                (a,) = json.load(f)["annotations"]
            assert mask_iou(rle_to_mask(a["segmentation"]), gt) >= MASK_IOU
            assert a["candidate"] == k and a["clicks"] == 1 and a["seconds"] > 0

            # the next image was encoded while this one was annotated: moving on waits for no encoder
            deadline = time.monotonic() + 60
            while not _get(app.url + "/api/images")["images"][1]["encoded"] and time.monotonic() < deadline:
                time.sleep(0.2)
            page.keyboard.press("n")
            page.wait_for_selector("#view[data-image-index='1']")
            assert "encoded ahead" in page.inner_text("#encode-info")
            gt1 = largest_object(scenes["scene_01.png"])
            bx, by = centre_point(gt1)
            box = page.locator("#view").bounding_box()
            with page.expect_response(lambda r: r.url.endswith("/prompt")) as resp:
                page.mouse.click(box["x"] + (bx + 0.5) * box["width"] / gt1.shape[1],
                                 box["y"] + (by + 0.5) * box["height"] / gt1.shape[0])
            with page.expect_response(lambda r: r.url.endswith("/prompt")) as resp:
                page.mouse.click(box["x"] + 2, box["y"] + 2, button="right")   # a background point
            assert [p[2] for p in resp.value.json()["points"]] == [1, 0]
            page.screenshot(path=str(tmp_path / "annotate_next.png"))

            # the page draws outlines as samrt.visualize does
            from samrt.visualize import mask_outline

            mask = np.zeros((12, 16), bool)
            mask[2:11, 0:9] = True
            mask[5:8, 9:14] = True
            js = page.evaluate("""async ([m, h, w]) => {
                const d = await import('/static/draw.js');
                return Array.from(d.maskOutline(Uint8Array.from(m), h, w, 2)).map((v) => (v ? 1 : 0));
            }""", [mask.ravel().astype(int).tolist(), 12, 16])
            np.testing.assert_array_equal(np.array(js, bool).reshape(12, 16), mask_outline(mask, 2))

            # the app goes away: the page says so, and what was accepted is on disk
            code, _, err = app.stop()
            page.mouse.click(box["x"] + 5, box["y"] + 5)
            page.wait_for_selector("#error:not([hidden])")
            assert "saved in" in page.inner_text("#error")
            browser.close()
    finally:
        if app.proc.poll() is None:
            code, _, err = app.stop()
    assert not errors, errors
    assert code == 0, err
    with open(os.path.join(out, "scene_00.json")) as f:
        assert len(json.load(f)["annotations"]) == 1
    assert os.path.getsize(tmp_path / "annotate.png") > 10_000


def test_annotate_starts_and_stops_its_own_server(small_build, tmp_path):
    folder, out = str(tmp_path / "photos"), str(tmp_path / "out")
    write_scene_folder(folder, indices=(0,))
    build, _ = small_build   # holds the export already: the command renders and starts, nothing to export
    app = Annotate([folder, "--out", out, "--build-dir", build])
    try:
        req = urllib.request.Request(app.url + "/api/sessions", method="POST")
        sid = json.load(urllib.request.urlopen(req))["session"]

        def post(action, body):
            r = urllib.request.Request(f"{app.url}/api/sessions/{sid}/{action}", method="POST",
                                       data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            return json.load(urllib.request.urlopen(r, timeout=120))

        post("open", {"index": 0})
        assert len(post("prompt", {"point": [140, 250, 1]})["candidates"]) == 3
    finally:
        code, stdout, stderr = app.stop()
    assert code == 0, stderr
    assert "http://127.0.0.1:" in stdout and "tritonserver stopped" in stderr
    grpc = re.search(r"tritonserver ready at (\S+):(\d+)", stderr)
    import socket

    with pytest.raises(OSError):   # the server it started is gone
        socket.create_connection((grpc.group(1), int(grpc.group(2))), timeout=2).close()
