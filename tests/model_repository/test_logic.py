"""Server-side logic without Triton: the LRU cache, request parsing, RLE."""

import json

import numpy as np
import pytest

from samrt.errors import InputError, SamrtError
from samrt.model_repository import logic
from samrt.wire import image_id_of


def _entry(n=10):
    return logic.CacheEntry(np.zeros(n, np.float32), (4, 5))


def test_cache_is_lru_and_bounded_in_bytes():
    cache = logic.EmbeddingCache(max_bytes=100)  # 2 entries of 40 bytes fit, 3 do not
    cache.put("a", _entry())
    cache.put("b", _entry())
    cache.get("a")  # a is now the most recent
    cache.put("c", _entry())
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 80 and cache.stats()["evictions"] == 1
    with pytest.raises(logic.UnknownImageError, match="'b': not in the embedding cache"):
        cache.get("b")
    kept = cache.get("a")
    assert cache.put("a", _entry(5)) is kept and cache.nbytes == 80  # same image again: the cached entry stays
    repaired = logic.CacheEntry(np.zeros(5, np.float32), (6, 7))
    assert cache.put("a", repaired) is repaired  # another size: damaged, replaced
    assert cache.nbytes == 60 and cache.stats()["repairs"] == 1  # replacing an entry updates the byte count
    with pytest.raises(ValueError, match="larger than the cache"):
        cache.put("big", _entry(100))


def test_cached_entries_are_never_changed_and_a_damaged_one_is_repaired():
    """The integrity rules of the cache owner's put (`EmbeddingCache.put`), as sam_encode uses
    them: an id cached with its size keeps its first embedding (a second put, e.g. a racing
    encode, does not replace it); an entry whose size disagrees with the image (damaged: one id,
    one shape) is replaced by the put that encode makes after its ask saw the wrong size; and
    no code path can write into a cached embedding."""
    cache = logic.EmbeddingCache(max_bytes=10 ** 6)
    shape = (2, 3, 3)
    first = logic.cache_entry(np.ones((1,) + shape, np.float32), np.array([[480, 640]]), shape)
    cache.put("img", first)
    assert cache.put("img", logic.cache_entry(np.full(shape, 7, np.float32), np.array([480, 640]), shape)) is first
    np.testing.assert_array_equal(cache.get("img").embeddings, 1.0)
    with pytest.raises(ValueError, match="read-only"):
        cache.get("img").embeddings[0, 0, 0] = 5.0
    # damaged: the entry says 10x10 for an image that is 480x640 (what a poisoned put used to leave)
    cache = logic.EmbeddingCache(max_bytes=10 ** 6)
    cache.put("img", logic.cache_entry(np.zeros(shape, np.float32), np.array([10, 10]), shape))
    assert cache.peek("img").original_size == (10, 10)
    cache.put("img", logic.cache_entry(np.ones(shape, np.float32), np.array([480, 640]), shape))  # encode's repair
    assert cache.get("img").original_size == (480, 640) and cache.stats()["repairs"] == 1
    np.testing.assert_array_equal(cache.get("img").embeddings, 1.0)


@pytest.mark.parametrize("emb,size,match", [
    (np.zeros((1, 2, 3, 4), np.float32), [4, 5], r"image_embeddings: got shape \[1, 2, 3, 4\], expected \[2, 3, 3\]"),
    (np.zeros((3, 2, 3, 3), np.float32), [4, 5], r"got shape \[3, 2, 3, 3\]"),
    (np.full((2, 3, 3), np.nan, np.float32), [4, 5], "non-finite"),
    (np.zeros((2, 3, 3), np.float32), [0, 5], r"original_size: got \[0, 5\], expected \(H, W\), both > 0"),
    (np.zeros((2, 3, 3), np.float32), [4], r"original_size: got \[4\]"),
    (np.zeros((2, 3, 3), np.float32), None, "original_size: got None"),
])
def test_a_put_is_checked_against_the_served_model(emb, size, match):
    with pytest.raises(InputError, match=match):
        logic.cache_entry(emb, None if size is None else np.array(size), (2, 3, 3))


def test_only_the_servers_own_key_writes_the_cache(monkeypatch):
    key = "k" * 32
    logic.check_cache_key(np.array([[key.encode()]], dtype=object), key, "sam_mask_decoder")  # the models' put
    for sent, how in [(None, "without"), (np.array([[b"guess"]], dtype=object), "with a wrong"),
                      (np.array([[b""]], dtype=object), "with a wrong"),
                      (np.array([[key.encode()] * 2], dtype=object), "with a wrong")]:
        with pytest.raises(logic.CacheWriteRefused, match=f"sam_mask_decoder: got a write to the embedding cache "
                                                          f"\\(image_embeddings\\) {how} internal key"):
            logic.check_cache_key(sent, key, "sam_mask_decoder")
    assert issubclass(logic.CacheWriteRefused, InputError)  # INVALID_ARG on the wire
    monkeypatch.setenv(logic.CACHE_KEY_ENV, key)
    assert logic.internal_cache_key() == key
    for value in ("", "short"):  # a server started without samrt's launcher: the cache owner does not load
        monkeypatch.setenv(logic.CACHE_KEY_ENV, value)
        with pytest.raises(SamrtError, match=f"{logic.CACHE_KEY_ENV}: got .*expected a random secret"):
            logic.internal_cache_key()


def _prep(coords, labels, **kw):
    return logic.prepare_prompts(np.asarray(coords, np.float32), np.asarray(labels, np.int32), kw.get("mask"),
                                 kw.get("multi"), 256)


def test_padding_point_is_added_as_sam_predictor_does():
    r = _prep([[[10, 20]]], [[1]])
    np.testing.assert_array_equal(r["prompt_labels"], [[1, -1]])
    np.testing.assert_allclose(r["prompt_coords"], [[[10, 20], [0, 0]]])  # still original pixels
    r = _prep([[[10, 20], [1, 1], [9, 9]]], [[0, 2, 3]])  # a box: no padding
    np.testing.assert_array_equal(r["prompt_labels"], [[0, 2, 3]])
    r = _prep([[[10, 20], [0, 0]]], [[1, -1]])  # explicit padding: used as given
    assert r["prompt_labels"].shape == (1, 2)
    assert r["multimask"].tolist() == [[True]] and r["has_mask_input"].tolist() == [[0.0]]
    assert r["prompt_mask"].shape == (1, 1, 256, 256) and not r["prompt_mask"].any()
    r = _prep([[[1, 1]]] * 2, [[1]] * 2, mask=np.ones((2, 1, 256, 256), np.float32), multi=np.array([[False]] * 2))
    assert r["multimask"].tolist() == [[False]] * 2 and r["has_mask_input"].tolist() == [[1.0]] * 2
    assert {k: v.dtype for k, v in r.items()} == {"prompt_coords": np.float32, "prompt_labels": np.float32,
                                                  "prompt_mask": np.float32, "has_mask_input": np.float32,
                                                  "multimask": np.bool_}


def test_request_errors():
    with pytest.raises(InputError, match="different ids in one request"):
        logic.single_image_id(np.array([[b"a"], [b"b"]], dtype=object))
    assert logic.single_image_id(np.array([[b"a"], [b"a"]], dtype=object)) == "a"
    with pytest.raises(InputError, match=r"image_id: got 3 bytes that are not UTF-8 \(b'\\xff\\xfe\\xfd'\)"):
        logic.single_image_id(np.array([[b"\xff\xfe\xfd"]], dtype=object))  # found by the wire fuzz: was INTERNAL
    with pytest.raises(InputError, match=r"mask_input: got shape \[1, 1, 64, 64\], expected \[1, 1, 256, 256\]"):
        _prep([[[1, 1]]], [[1]], mask=np.zeros((1, 1, 64, 64), np.float32))
    with pytest.raises(InputError, match="multimask_output: got different values"):
        _prep([[[1, 1]], [[2, 2]]], [[1], [1]], multi=np.array([[True], [False]]))


def test_masks_to_rle_roundtrip():
    from pycocotools import mask as mask_utils

    masks = np.random.default_rng(0).uniform(size=(2, 3, 7, 9)) > 0.5
    rles = logic.masks_to_rle(masks)
    assert rles.shape == (2, 3)
    for idx in np.ndindex(2, 3):
        r = json.loads(rles[idx])
        back = mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()})
        np.testing.assert_array_equal(back.astype(bool), masks[idx])


def test_image_bytes_errors():
    with pytest.raises(InputError, match="got 3 bytes that no image decoder reads"):
        logic.decode_image_bytes(b"abc")
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buf, format="PNG")
    with pytest.raises(InputError, match="got 20x30 = 600 pixels, expected at most 100"):
        logic.decode_image_bytes(buf.getvalue(), max_pixels=100)
    assert logic.decode_image_bytes(buf.getvalue()).shape == (20, 30, 3)
    assert image_id_of(np.zeros((2, 2, 3), np.uint8)) != image_id_of(np.zeros((2, 3, 3), np.uint8))


def test_the_click_path_is_prepared_once_per_recent_size():
    from samrt.model_repository.models.encode import _RecentSizes

    recent = _RecentSizes(n=2)
    assert recent.first_time((480, 640)) and not recent.first_time(np.array([480, 640]))
    assert recent.first_time((100, 200)) and not recent.first_time((480, 640))  # 480x640: the most recent now
    assert recent.first_time((7, 9))  # three sizes in a memory of two: the least recent (100x200) goes
    assert recent.first_time((100, 200)) and not recent.first_time((7, 9))
