"""`samrt annotate` end to end: the command, the embedded trained model on tritonserver, and the
page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is
ever downloaded). The model server "goes away" and comes back through a TCP proxy the test cuts
and restores (the app's real gRPC connection fails and reconnects)."""

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
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


class Proxy:
    """A TCP proxy to `target` (host, port) on a port of its own; `cut()` closes it and every
    connection through it (connections are refused, as to a server that stopped), `restore()`
    listens again on the same port."""

    def __init__(self, target):
        self.target, self.port = target, free_port()
        self.conns, self.lock = [], threading.Lock()
        self.restore()

    def restore(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def _accept(self, sock):
        while True:
            try:
                client, _ = sock.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s_ in (a, b):
            try:
                s_.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the accepting thread: a plain close() would not
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


def _canvas(page) -> np.ndarray:
    """The page's canvas at its own resolution, HxWx3 (what is drawn, not the scaled screenshot)."""
    from PIL import Image

    url = page.evaluate("document.getElementById('view').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def _rings(mask):
    """The two tones' rings of `mask`'s outline, as the page draws the mask being made."""
    from samrt.visualize import STYLE, _scaled, two_tone_outline

    return two_tone_outline(mask, _scaled(STYLE["outline_width"], mask.shape, 1))


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

    from samrt.visualize import STYLE

    folder, out = str(tmp_path / "photos"), str(tmp_path / "out")
    scenes = write_scene_folder(folder)
    gt = largest_object(scenes["scene_00.png"])   # a rectangle of 36k pixels
    host, port = small_server.grpc_url.rsplit(":", 1)
    proxy = Proxy((host, int(port)))   # the app reaches the model server through it
    app = Annotate([folder, "--out", out, "--url", f"127.0.0.1:{proxy.port}",
                    "--amg-points-per-side", "4", "--amg-pred-iou-thresh", "0", "--amg-stability-score-thresh", "0"])
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

            def click(x, y, shape=gt.shape, **kw):
                box = page.locator("#view").bounding_box()
                h, w = shape
                with page.expect_response(lambda r: r.url.endswith("/prompt")) as resp:
                    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h, **kw)
                return resp.value.json()

            from samrt.scenes import centre_point

            state = click(*centre_point(gt))
            page.wait_for_selector("#view[data-mask-drawn=true]")
            assert page.locator("#candidates button").count() == 3   # a lone click: the three candidates
            # the mask being made is outlined in two tones (dark outside, light inside): legible on any image
            shown = from_runs(state["candidates"][state["selected"]]["runs"], *gt.shape)
            outer, inner = _rings(shown)
            pixels = _canvas(page)
            for ring, tone in ((outer, STYLE["outline_tones"][0]), (inner, STYLE["outline_tones"][1])):
                assert ring.sum() > 100 and (pixels[ring] == tone).all(axis=1).mean() >= 0.97
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
            click(*centre_point(gt1), shape=gt1.shape)
            box = page.locator("#view").bounding_box()
            with page.expect_response(lambda r: r.url.endswith("/prompt")) as resp:
                page.mouse.click(box["x"] + 2, box["y"] + 2, button="right")   # a background point
            assert [p[2] for p in resp.value.json()["points"]] == [1, 0]
            assert page.locator("#candidates button[data-candidate]").count() == 1   # a second prompt: token 0
            page.keyboard.press("c")                                                  # ... its candidates on request
            page.wait_for_function("document.querySelectorAll('#candidates button[data-candidate]').length === 3")
            page.screenshot(path=str(tmp_path / "annotate_next.png"))

            # the model server goes away: a click shows its point and no mask (never the old one),
            # Enter accepts nothing, and the page says so
            proxy.cut()
            page.mouse.click(box["x"] + (gt1.shape[1] // 2), box["y"] + 10)
            page.wait_for_selector("#view[data-stale=true]", timeout=30_000)
            assert page.locator("#view").get_attribute("data-mask-drawn") == "false"
            assert "No mask for these prompts" in page.inner_text("#candidates")
            assert "model server unreachable" in page.inner_text("#error")
            page.keyboard.press("Enter")
            time.sleep(1.0)
            assert page.locator("#objects li").count() == 0 and not os.path.exists(os.path.join(out, "scene_01.json"))
            # ... and comes back: the page reconnects by itself, and the next click is answered
            proxy.restore()
            page.wait_for_selector("body[data-reconnected='1']", timeout=30_000)
            assert page.locator("#error").is_hidden() and "reconnected" in page.inner_text("#conn-info")
            page.keyboard.press("c")   # ask again for the prompts that got no answer
            page.wait_for_selector("#view[data-stale=false][data-mask-drawn=true]", timeout=30_000)

            # prefill: every proposal in a colour of its own, the highlighted one marked
            page.keyboard.press("Escape")
            page.keyboard.press("f")
            page.wait_for_function("document.querySelectorAll('#proposals li').length >= 2", timeout=120_000)
            swatches = page.eval_on_selector_all("#proposals .swatch", "els => els.map(e => e.style.background)")
            assert len(set(swatches)) == len(swatches) >= 2, swatches
            assert page.locator("#proposals li.focus").count() == 1
            page.screenshot(path=str(tmp_path / "annotate_prefill.png"))

            # the page draws outlines as samrt.visualize does
            from samrt.visualize import mask_outline, two_tone_outline

            mask = np.zeros((12, 16), bool)
            mask[2:11, 0:9] = True
            mask[5:8, 9:14] = True
            js = page.evaluate("""async ([m, h, w]) => {
                const d = await import('/static/draw.js');
                const depth = d.maskOutline(Uint8Array.from(m), h, w, 3);
                return Array.from(depth).map((v) => (v === 0 ? 0 : v <= d.outerRings(3) ? 1 : 2));
            }""", [mask.ravel().astype(int).tolist(), 12, 16])
            js = np.array(js).reshape(12, 16)
            np.testing.assert_array_equal(js > 0, mask_outline(mask, 3))
            outer, inner = two_tone_outline(mask, 3)
            np.testing.assert_array_equal(js == 1, outer)
            np.testing.assert_array_equal(js == 2, inner)

            # the app goes away: the page says so, and what was accepted is on disk
            code, _, err = app.stop()
            page.mouse.click(box["x"] + 5, box["y"] + 5)
            page.wait_for_selector("#error:not([hidden])")
            assert "saved in" in page.inner_text("#error")
            browser.close()
    finally:
        proxy.cut()
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
