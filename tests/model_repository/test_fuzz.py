"""Bad input at scale (issue "Shared safely", section 6): a seeded property-based fuzz of the wire.

Hypothesis draws requests for every public model (`samrt.wire.PUBLIC_MODELS`) from the wire
declaration: each declared input sent well-formed, left out, with another datatype, another rank,
an empty dimension, or borderline values (NaN, inf, huge and negative numbers, odd bytes and odd
JSON), now and then an undeclared input, over gRPC and HTTP with plain tritonclient. Every answer
must be a typed error (`samrt.client._transport.error_from_exception`: InvalidRequestError, and
ImageNotCachedError from sam_decode) or a correct answer (shapes and ids checked against what
was sent). Meanwhile a thread clicks a fixed image through the SDK and must get the answer it
got before the fuzz every time. Afterwards the server is ready, no model process was restarted,
an encode and decode answer as before the run, and the resident memory of tritonserver and its
model processes stayed under a stated bound.

Bounded: `EXAMPLES` requests (asserted: at least `MIN_REQUESTS` sent), derandomized (the same
requests every run), a per-request timeout and Hypothesis' deadline.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Dict

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.utils import InferenceServerException

from samrt import imageio, wire
from samrt.client import SamClient, TritonSamPredictor
from samrt.client._transport import error_from_exception
from samrt.errors import ImageNotCachedError, InputError, InvalidRequestError

from ..conftest import MAX_PIXELS, MAX_PROMPTS, random_image

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EXAMPLES = 2200
MIN_REQUESTS = 2000  # requests that reached the server (a few are refused by tritonclient before sending)
TIMEOUT_S = 60.0
# The server's resident memory (tritonserver plus its model processes, VmRSS) may stay this much
# above its start once the run is over: the embedding cache is bounded (3 entries of 4 MiB here), Python and the
# engines keep arenas; anything that grows with the number of requests would pass it.
RSS_GROWTH_BOUND = 1 << 30
# What the server may hold above its start while the fuzz runs: requests in flight, two encoders'
# activations (the encoder's memory arena is off, so they come and go with each image: they are
# not in the start's figure) and automatic-mask jobs.
PEAK_GROWTH_BOUND = 2 << 30
SETTLE_S = 2.0
LOW_RES = 256  # the tiny model's mask_input side

FLOATS = st.one_of(st.floats(-2000, 2000, width=32), st.floats(0, 1, width=32),
                   st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, -0.0, 1e9, -1e9]))
INTS = st.one_of(st.integers(-3, 5), st.sampled_from([2 ** 31 - 1, -2 ** 31, 255, -1]))
DTYPES = ["FP32", "FP64", "FP16", "INT32", "INT64", "INT8", "UINT8", "BOOL", "BYTES"]
NP = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64,
      "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_, "BYTES": np.object_}
OPTION_VALUES = st.one_of(st.integers(-5, 6), st.floats(allow_nan=True, allow_infinity=False), st.none(),
                          st.text(max_size=5), st.lists(st.integers(), max_size=2),
                          st.sampled_from([10 ** 9, -(10 ** 9), 0.5, 1e300, True]))
_ODD_FLOATS = st.one_of(st.floats(-1, 2), st.just(float("nan")))
SAFE_OPTIONS = {"points_per_side": st.integers(1, 2), "points_per_batch": st.integers(1, 10 ** 6),
                "crop_n_layers": st.just(0), "min_mask_region_area": st.integers(0, 50),
                "pred_iou_thresh": _ODD_FLOATS, "stability_score_thresh": _ODD_FLOATS, "box_nms_thresh": _ODD_FLOATS,
                "crop_overlap_ratio": _ODD_FLOATS, "crop_n_points_downscale_factor": st.integers(1, 4),
                "stability_score_offset": _ODD_FLOATS, "crop_nms_thresh": _ODD_FLOATS}


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _png_bomb() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (a few bytes of data)."""
    import struct
    import zlib

    raw = _png(np.zeros((1, 1, 3), np.uint8))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


class Pool:
    """Images the fuzz may send well-formed: encoded once before the run, so that a valid request
    is usually a cache hit (the encoder stays free for the thread that clicks alongside)."""

    def __init__(self, client: SamClient) -> None:
        self.images = [random_image(48, 64, seed=601), random_image(40, 30, seed=602)]
        self.ids = [client.encode(im).image_id for im in self.images]
        self.sizes = {i: im.shape[:2] for i, im in zip(self.ids, self.images)}
        self.pngs = [_png(im) for im in self.images]
        self.bytes_cases = self.pngs + [b"", b"\x89PNG\r\n\x1a\n", self.pngs[0][:40], b"GIF89a" + b"\0" * 20,
                                        bytes(range(256)), _png_bomb(), b"\xff\xd8\xff" + b"\x00" * 64]


@st.composite
def _image(draw, pool: Pool, well_formed: bool):
    """An image input: mostly the pool's (cache hits); rarely a new valid one (a real encode);
    malformed ones (empty, 1x3000, wrong channels, over the pixel limit) when not `well_formed`."""
    if well_formed or draw(st.integers(0, 1)):
        if draw(st.integers(0, 49)) == 0:  # a new image: the encoder runs (rare: it is the slow path)
            h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
            return np.full((h, w, 3), draw(st.integers(0, 255)), np.uint8)
        return pool.images[draw(st.integers(0, 1))]
    return draw(st.sampled_from([np.zeros((0, 5, 3), np.uint8), np.zeros((1, 3000, 3), np.uint8),
                                 np.zeros((2, 0, 3), np.uint8), np.zeros((6, 7, 1), np.uint8),
                                 np.zeros((6, 7, 4), np.uint8), np.zeros((4, 4, 0), np.uint8),
                                 np.zeros((2001, 2000, 3), np.uint8)]))


@st.composite
def _options(draw, runnable: bool):
    """sam_amg's options: `runnable` a small job (1 to 4 points, no crops; each one costs seconds
    here: the job runs at idle priority); else odd values, unknown names, or not JSON at all."""
    if runnable:
        fields = {"points_per_side": draw(st.integers(1, 2))}
        for name in draw(st.lists(st.sampled_from(sorted(SAFE_OPTIONS)), max_size=4, unique=True)):
            if name != "points_per_side":
                fields[name] = draw(SAFE_OPTIONS[name])
        return json.dumps(fields).encode()
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(SAFE_OPTIONS) + ["point_grids", "output_mode", "nope"]))
        value = draw(OPTION_VALUES if name != "crop_n_layers" else st.sampled_from([-1, 5, 100, 2.5, "1", None]))
        fields = {"points_per_side": 0, name: value}  # every value is type-checked before points_per_side's range
        return json.dumps(fields).encode()
    return draw(st.sampled_from([b"", b"{", b"null", b"[]", b"[1, 2]", b'"text"', b"\xff\xfe", b"1e999",
                                 b'{"points_per_side": NaN}', b'{"points_per_side": 1e999}',
                                 b'{"points_per_side": 1000000000}', b'{"crop_n_layers": 100}',
                                 b'{"points_per_batch": 0}', b'{"points_per_side": 1, "box_nms_thresh": "0.7"}']))


def _values(draw, dtype: str, shape, sane: np.ndarray):
    """Values of a numeric input: `sane` ones, or borderline ones (NaN, inf, huge, negative, out of range)."""
    if draw(st.integers(0, 2)):
        return sane.astype(NP[dtype])
    values = draw(st.lists(FLOATS if dtype == "FP32" else INTS, min_size=1, max_size=4))
    size = int(np.prod(shape))
    with np.errstate(all="ignore"):  # the values repeated over the shape (np.resize is slow for large shapes)
        return np.tile(np.array(values, np.float64), -(-size // len(values)))[:size].astype(NP[dtype]).reshape(shape)


def _wrong_dtype(draw, array: np.ndarray, declared: str):
    dtype = draw(st.sampled_from([d for d in DTYPES if d != declared]))
    if dtype == "BYTES":
        return np.array([b"x"] * array.size, dtype=object).reshape(array.shape), dtype
    with np.errstate(all="ignore"):
        return (np.asarray(array, np.float64) if array.dtype != object else np.zeros(array.shape)).astype(NP[dtype]), dtype


# How often each model is drawn: sam_amg's jobs are the slowest requests, so it is drawn least.
MODEL_WEIGHTS = {"sam_encode": 3, "sam_decode": 4, "sam_segment": 3, "sam_amg": 2}


@st.composite
def requests(draw, pool: Pool):
    """(protocol, model name, {input: (array, datatype)}). A third of the requests are well-formed
    (declared datatypes and shapes; values sane or borderline), the others have one or two inputs
    left out, of another datatype, of another rank or empty; one in twenty has an undeclared input."""
    model = wire.get_model(draw(st.sampled_from([m for m, k in MODEL_WEIGHTS.items() for _ in range(k)])))
    protocol = draw(st.sampled_from(["grpc", "http"]))
    well_formed = draw(st.integers(0, 2)) == 0
    p = draw(st.sampled_from([1, 1, 1, 2, 3] + ([] if well_formed else [MAX_PROMPTS + 1])))
    n = draw(st.sampled_from([1, 1, 2, 3, 5] + ([] if well_formed else [65])))
    lead = (p,) if model.batch else ()
    h, w = pool.images[0].shape[:2]
    sane = {"point_coords": np.random.default_rng(p * 7 + n).uniform(0, 1, lead + (n, 2)) * np.array([w, h]),
            "point_labels": np.ones(lead + (n,)), "mask_input": np.zeros(lead + (1, LOW_RES, LOW_RES))}
    valid = {}
    for t in model.inputs:
        if t.name == "image":
            valid[t.name] = draw(_image(pool, well_formed))
        elif t.name == "image_bytes":
            valid[t.name] = np.array([draw(st.sampled_from(pool.bytes_cases))], dtype=object)
        elif t.name == "options":
            valid[t.name] = np.array([draw(_options(runnable=draw(st.integers(0, 59)) == 0))], dtype=object)
        elif t.name == "image_id":
            ids = [i.encode() for i in pool.ids + ["", "0" * 32, "x" * 5000]] + [b"\xff\xfe\xfd"]
            if draw(st.integers(0, 2)):  # one of the pool's images, on every row
                valid[t.name] = np.full((p, 1), draw(st.sampled_from(ids[:2])), dtype=object)
            else:
                valid[t.name] = np.array(draw(st.lists(st.sampled_from(ids), min_size=p, max_size=p)),
                                         dtype=object).reshape(p, 1)
        elif t.datatype == "BOOL":
            valid[t.name] = np.full(lead + (1,), draw(st.booleans()))
        else:
            valid[t.name] = _values(draw, t.datatype, sane[t.name].shape, sane[t.name])
    inputs = {}
    broken = set() if well_formed else set(draw(st.lists(st.sampled_from(model.input_names), min_size=1, max_size=2)))
    for t in model.inputs:
        array, dtype = valid[t.name], t.datatype
        how = draw(st.sampled_from(["left out", "datatype", "rank", "empty"])) if t.name in broken else "as declared"
        if how == "left out" or (t.optional and t.name != "options" and draw(st.booleans())):
            continue
        if how == "datatype":
            array, dtype = _wrong_dtype(draw, array, dtype)
        elif how == "rank":
            array = array[None] if draw(st.booleans()) or array.ndim == 0 else array.reshape(-1)
        elif how == "empty" and array.ndim:
            array = array[:0] if draw(st.booleans()) else array[..., :0]
        inputs[t.name] = (np.ascontiguousarray(array) if array.dtype != object else array, dtype)
    if model.name == "sam_amg" and "options" not in inputs:  # left out: the default job (1024 points), too slow
        inputs["options"] = (np.array([b'{"points_per_side": 0}'], dtype=object), "BYTES")  # here; refused instead
    if draw(st.integers(0, 19)) == 0:
        inputs["undeclared"] = (np.zeros((p, 1) if model.batch else (1,), np.float32), "FP32")
    return protocol, model.name, inputs


TIMES = {}
OUTPUTS = {"sam_encode": ["image_id", "original_size"], "sam_decode": ["masks", "iou_predictions"],
           "sam_segment": ["masks", "iou_predictions"], "sam_amg": ["records"]}


def _build(protocol, model, inputs):
    """tritonclient's inputs and outputs for the request (tritonclient may refuse some itself)."""
    mod = grpcclient if protocol == "grpc" else httpclient
    ins = []
    for name, (array, dtype) in inputs.items():
        t = mod.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        ins.append(t)
    return ins, [mod.InferRequestedOutput(o) for o in OUTPUTS[model]]


def _send(clients, protocol, model, ins, outs):
    kw = {"client_timeout": TIMEOUT_S} if protocol == "grpc" else {}
    result = clients[protocol].infer(model, ins, outputs=outs, **kw)
    return {o: result.as_numpy(o) for o in OUTPUTS[model]}


def _image_sent(inputs, pool):
    """The decoded pixels of a request's image (None when it sends none, or bytes that do not decode)."""
    if "image" in inputs and "image_bytes" not in inputs and inputs["image"][1] == "UINT8":
        return inputs["image"][0]
    if "image_bytes" in inputs and "image" not in inputs and inputs["image_bytes"][1] == "BYTES":
        try:
            return imageio.decode_image_bytes(bytes(inputs["image_bytes"][0].reshape(-1)[0]), MAX_PIXELS)
        except InputError:
            return None
    return None


def _check_answer(model, inputs, out, pool):
    """A successful answer is the answer to what was sent."""
    if model == "sam_encode":
        image = _image_sent(inputs, pool)
        assert image is not None, "sam_encode answered a request without a decodable image"
        assert out["image_id"].reshape(-1)[0].decode() == wire.image_id_of(image)
        assert tuple(out["original_size"].reshape(-1)) == image.shape[:2]
    elif model == "sam_decode":
        ids = {bytes(x) for x in inputs["image_id"][0].reshape(-1)}
        assert len(ids) == 1 and ids.pop().decode() in pool.sizes, "decode answered for an id never encoded"
        p = inputs["point_coords"][0].shape[0]
        multimask = inputs.get("multimask_output", (np.array([[True]]), "BOOL"))[0].reshape(-1)[0]
        size = pool.sizes[bytes(inputs["image_id"][0].reshape(-1)[0]).decode()]
        assert out["masks"].shape == (p, 3 if multimask else 1) + tuple(size)
        assert out["iou_predictions"].shape == (p, 3 if multimask else 1)
        assert np.all(np.isfinite(out["iou_predictions"]))
    elif model == "sam_segment":
        image = _image_sent(inputs, pool)
        multimask = inputs.get("multimask_output", (np.array([True]), "BOOL"))[0].reshape(-1)[0]
        assert out["masks"].shape == (3 if multimask else 1,) + image.shape[:2]
        assert np.all(np.isfinite(out["iou_predictions"]))
    else:
        image = _image_sent(inputs, pool)
        for r in json.loads(out["records"].reshape(-1)[0]):
            assert r["segmentation"]["size"] == list(image.shape[:2]) and r["area"] >= 0


def _rss_by_process(server) -> Dict[str, int]:
    """{"tritonserver" or instance name: resident bytes (VmRSS from /proc)} of the server's processes."""
    out = {}
    for name, pid in [("tritonserver", server.process.pid)] + list(server.model_processes().items()):
        try:
            with open(f"/proc/{pid}/status") as f:
                out[name] = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return out


def _rss(server) -> int:
    """Resident bytes of tritonserver and its model processes."""
    return sum(_rss_by_process(server).values())


class Alongside(threading.Thread):
    """Well-formed clicks on a fixed image through the SDK while the fuzz runs: each answer must
    equal the answer before the run (the predictor encodes again if the fuzz's images evicted it).
    Also samples the server's memory."""

    def __init__(self, server, image, point, want) -> None:
        super().__init__(daemon=True)
        self.server, self.image, self.point, self.want = server, image, point, want
        self.stop, self.answers, self.failures, self.peak_rss = threading.Event(), 0, [], 0
        self.peak_by_process: Dict[str, int] = {}

    def run(self) -> None:
        with SamClient(self.server.grpc_url, timeout=TIMEOUT_S) as c:
            predictor = TritonSamPredictor(c)
            while not self.stop.is_set():
                now = _rss_by_process(self.server)
                self.peak_rss = max(self.peak_rss, sum(now.values()))
                for name, rss in now.items():
                    self.peak_by_process[name] = max(self.peak_by_process.get(name, 0), rss)
                try:
                    predictor.set_image(self.image)
                    got = predictor.predict(point_coords=self.point, point_labels=np.array([1]))
                    _assert_same(got, self.want)
                    self.answers += 1
                except Exception as e:  # noqa: BLE001 - every failure is reported by the test
                    self.failures.append(f"{type(e).__name__}: {e}")
                time.sleep(0.05)


def _assert_same(got, want):
    masks, scores, logits = got
    assert (masks == want[0]).mean() >= 0.9999
    np.testing.assert_allclose(scores, want[1], atol=1e-4)
    np.testing.assert_allclose(logits, want[2], atol=1e-3)


def _click(server, image, point):
    with SamClient(server.grpc_url) as c:
        predictor = TritonSamPredictor(c)
        predictor.set_image(image)
        return predictor.predict(point_coords=point, point_labels=np.array([1]))


def test_the_wire_survives_thousands_of_malformed_requests(server):
    with SamClient(server.grpc_url) as c:
        pool = Pool(c)
    image, point = random_image(96, 128, seed=600), np.array([[70.0, 40.0]])
    want = _click(server, image, point)
    before = _rss_by_process(server)
    rss_before = sum(before.values())
    restarts_before = len(server.restarts)
    clients = {"grpc": grpcclient.InferenceServerClient(server.grpc_url),
               "http": httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT_S,
                                                        connection_timeout=TIMEOUT_S)}
    sent = {m.name: 0 for m in wire.PUBLIC_MODELS}
    outcomes = {"answered": 0, "refused": 0, "not sent": 0}
    bad = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=timedelta(seconds=TIMEOUT_S),
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(request=requests(pool))
    def one(request):
        protocol, model, inputs = request
        try:
            ins, outs = _build(protocol, model, inputs)
        except InferenceServerException:  # tritonclient's own check, before anything is sent
            outcomes["not sent"] += 1
            return
        sent[model] += 1
        t0 = time.perf_counter()
        try:
            out = _send(clients, protocol, model, ins, outs)
            TIMES.setdefault((model, "ok"), []).append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - typed below; a timeout or a lost connection fails the test
            TIMES.setdefault((model, "err"), []).append(time.perf_counter() - t0)
            err = error_from_exception(e, f"{protocol} {model}", ImageNotCachedError)
            allowed = (InvalidRequestError, ImageNotCachedError) if model == "sam_decode" else (InvalidRequestError,)
            if not isinstance(err, allowed):
                bad.append((model, protocol, {k: (v[0].dtype, v[0].shape, v[1]) for k, v in inputs.items()},
                            f"{type(err).__name__}: {err}"))
            outcomes["refused"] += 1
            return
        outcomes["answered"] += 1
        try:
            _check_answer(model, inputs, out, pool)
        except AssertionError as e:
            bad.append((model, protocol, {k: (v[0].dtype, v[0].shape, v[1]) for k, v in inputs.items()}, str(e)))

    T0 = time.perf_counter()
    alongside = Alongside(server, image, point, want)
    alongside.start()
    try:
        one()
    finally:
        alongside.stop.set()
        alongside.join(timeout=2 * TIMEOUT_S)
        clients["http"].close()
    print("TOTAL", time.perf_counter() - T0, {k: (len(v), round(sum(v), 2), round(max(v), 2)) for k, v in TIMES.items()})
    total = sum(sent.values())
    summary = f"sent {sent}, outcomes {outcomes}, alongside {alongside.answers} answers"
    kinds = Counter(f"{b[0]}: {b[3][:300]}" for b in bad)
    assert not bad, (f"{len(bad)} requests got neither a typed error nor a correct answer ({summary}); "
                     f"by kind: {dict(kinds)}; first: {bad[:3]}")
    assert total >= MIN_REQUESTS and min(sent.values()) >= MIN_REQUESTS // 10, summary
    assert outcomes["answered"] >= 100 and outcomes["refused"] >= 1000, summary  # both kinds, in number
    assert not alongside.failures, f"well-formed clicks alongside failed: {alongside.failures[:3]} ({summary})"
    assert alongside.answers >= 20, summary
    assert server.is_ready() and len(server.restarts) == restarts_before  # no model process died
    _assert_same(_click(server, image, point), want)  # the same answer as before the run
    time.sleep(SETTLE_S)  # the last requests' buffers are freed
    after = _rss_by_process(server)
    settled, peak = sum(after.values()) - rss_before, max(alongside.peak_rss, sum(after.values())) - rss_before
    by_process = sorted(((alongside.peak_by_process.get(k, 0) - v, after.get(k, 0) - v, k) for k, v in before.items()),
                        reverse=True)
    where = f"by process, MiB (peak, after): {[(k, round(p / 2 ** 20), round(a / 2 ** 20)) for p, a, k in by_process[:5]]}"
    assert settled < RSS_GROWTH_BOUND, f"resident memory grew by {settled / 2 ** 20:.0f} MiB after the run ({summary}); {where}"
    assert peak < PEAK_GROWTH_BOUND, f"resident memory peaked {peak / 2 ** 20:.0f} MiB above the start ({summary}); {where}"
    print(f"\nfuzz: {summary}; resident memory {rss_before / 2 ** 20:.0f} MiB before, "
          f"{settled / 2 ** 20:.0f} MiB more after, peak {peak / 2 ** 20:.0f} MiB more; {where}")
