"""The embedding cache's disk tier without Triton: round trips, checks on read, the byte bound,
restarts and threads (`samrt.model_repository.disk_cache`)."""

import os
import threading

import numpy as np
import pytest

from samrt.artifacts import OutputDirError
from samrt.model_repository import logic
from samrt.model_repository.disk_cache import SUFFIX, DiskTier, engine_fingerprint


def _entry(seed=0, n=64, state=True):
    rng = np.random.default_rng(seed)
    image_state = {"dense_pe": rng.standard_normal((2, 3)).astype(np.float16),
                   "tokens": rng.integers(0, 9, (4,), dtype=np.int64)} if state else {}
    return logic.CacheEntry(rng.standard_normal((1, n)).astype(np.float32).reshape(4, n // 4), (480, 640), image_state)


def _same(a, b):
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert a.embeddings.dtype == b.embeddings.dtype and tuple(a.original_size) == tuple(b.original_size)
    assert set(a.image_state) == set(b.image_state)
    for k in a.image_state:
        np.testing.assert_array_equal(a.image_state[k], b.image_state[k])
        assert a.image_state[k].dtype == b.image_state[k].dtype


def _tier(root, key="model-a", max_bytes=1 << 20):
    return DiskTier(str(root), key, max_bytes)


def _load(tier, image_id):
    found = tier.load(image_id)
    return None if found is None else logic.CacheEntry(*found)


def test_round_trip_keeps_every_array_of_the_entry_across_a_restart(tmp_path):
    tier = _tier(tmp_path)
    tier.save("abc123", _entry(1))
    tier.flush()
    again = _tier(tmp_path)  # a new process: the index is read from the folder
    assert again.contains("abc123")
    _same(_load(again, "abc123"), _entry(1))
    assert again.stats()["disk_hits"] == 1 and again.stats()["disk_files"] == 1
    assert _load(again, "other") is None and again.stats()["disk_misses"] == 1


def _file(tier, image_id):
    return os.path.join(tier.folder, image_id + SUFFIX)


@pytest.mark.parametrize("damage", ["flip_payload", "truncate", "empty", "garbage_header", "other_id"])
def test_a_damaged_file_is_a_clean_miss_and_is_deleted(tmp_path, damage):
    tier = _tier(tmp_path)
    tier.write("abc123", _entry(1))
    path = _file(tier, "abc123")
    data = bytearray(open(path, "rb").read())
    if damage == "flip_payload":
        data[-5] ^= 0xFF
    elif damage == "truncate":
        data = data[:-7]
    elif damage == "empty":
        data = bytearray()
    elif damage == "garbage_header":
        data[20:40] = b"x" * 20
    with open(path, "wb") as f:
        f.write(data)
    if damage == "other_id":  # a file renamed to another id names its own id inside
        os.replace(path, _file(tier, "def456"))
        tier = _tier(tmp_path)
        assert _load(tier, "def456") is None
    else:
        assert _load(tier, "abc123") is None
    assert tier.stats()["disk_rejected"] == 1 and tier.stats()["disk_files"] == 0
    assert not [n for n in os.listdir(tier.folder) if n.endswith(SUFFIX)]


def test_another_models_entries_are_never_read(tmp_path):
    a = _tier(tmp_path, "model-a")
    a.write("abc123", _entry(1))
    b = _tier(tmp_path, "model-b")
    assert _load(b, "abc123") is None  # its own folder: not there
    os.makedirs(b.folder, exist_ok=True)  # copied by hand into model-b's folder: the header says model-a
    with open(_file(a, "abc123"), "rb") as f, open(_file(b, "abc123"), "wb") as g:
        g.write(f.read())
    b = _tier(tmp_path, "model-b")
    assert _load(b, "abc123") is None and b.stats()["disk_rejected"] == 1
    _same(_load(_tier(tmp_path, "model-a"), "abc123"), _entry(1))


def test_bound_in_bytes_evicts_the_least_recently_used_and_survives_restart(tmp_path):
    size = len(open(_write_one(tmp_path / "probe"), "rb").read())
    tier = _tier(tmp_path / "c", max_bytes=3 * size)
    for name in ("a1", "b2", "c3"):
        tier.write(name, _entry(0))
    assert _load(tier, "a1") is not None  # a1 is now the most recent (its mtime too)
    tier.write("d4", _entry(0))
    assert not tier.contains("b2") and tier.contains("a1") and tier.contains("d4")
    assert tier.stats()["disk_bytes"] == 3 * size and tier.stats()["disk_evictions"] == 1
    assert sorted(os.listdir(tier.folder)) == sorted(n + SUFFIX for n in ("a1", "c3", "d4"))
    smaller = _tier(tmp_path / "c", max_bytes=2 * size)  # restarted with a smaller bound: trimmed at once, LRU
    assert smaller.stats()["disk_files"] == 2 and not smaller.contains("c3")
    with pytest.raises(ValueError, match="larger than the disk tier"):
        _tier(tmp_path / "d", max_bytes=size - 1).write("x1", _entry(0))


def _write_one(root):
    tier = _tier(root)
    tier.write("p0", _entry(0))  # ids of the same length: files of the same size
    return _file(tier, "p0")


def test_the_folder_must_be_new_empty_or_samrts(tmp_path):
    (tmp_path / "mine.txt").write_text("not yours")
    with pytest.raises(OutputDirError, match="not empty"):
        _tier(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "not yours"
    with pytest.raises(ValueError, match="image_id"):
        _tier(tmp_path / "ok").save("../escape", _entry(0))


def test_stale_temporary_files_are_removed_and_foreign_files_kept(tmp_path):
    tier = _tier(tmp_path)
    stale = os.path.join(tier.folder, ".tmp-abc.1.2")
    with open(stale, "wb") as f:
        f.write(b"half")
    os.utime(stale, (0, 0))
    other = os.path.join(tier.folder, "notes.md")
    with open(other, "w") as f:
        f.write("kept")
    _tier(tmp_path)
    assert not os.path.exists(stale) and os.path.exists(other)


def test_threads_putting_and_reading_the_same_ids_get_whole_entries(tmp_path):
    tier = _tier(tmp_path, max_bytes=1 << 30)
    errors = []

    def work(k):
        try:
            for i in range(30):
                image_id = f"id{i % 5}"
                tier.write(image_id, _entry(i % 5))
                got = _load(tier, image_id)
                if got is not None:  # another thread may be replacing it: old or new, never half
                    _same(got, _entry(i % 5))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert tier.stats()["disk_rejected"] == 0 and tier.stats()["disk_files"] == 5
    assert not [n for n in os.listdir(tier.folder) if n.startswith(".tmp-")]


def test_embedding_cache_reads_back_from_disk_what_memory_evicted(tmp_path):
    one = _entry(1).nbytes
    cache = logic.EmbeddingCache(one, DiskTier(str(tmp_path), "model-a", 1 << 20))  # room for one entry in memory
    cache.put("a1", _entry(1))
    cache.put("b2", _entry(2))  # a1 leaves memory, stays on disk
    cache.disk.flush()
    assert len(cache) == 1 and "a1" in cache  # read back into memory (b2 leaves it)
    _same(cache.get("a1"), _entry(1))
    _same(cache.get("b2"), _entry(2))
    with pytest.raises(logic.UnknownImageError):
        cache.get("c3")
    restarted = logic.cache_from_params({"cache_bytes": str(10 * one), "cache_dir": str(tmp_path),
                                         "cache_model_key": "model-a", "cache_dir_bytes": str(1 << 20)})
    _same(restarted.get("a1"), _entry(1))
    assert restarted.stats()["disk_hits"] == 1 and restarted.stats()["hits"] == 1
    assert logic.cache_from_params({"cache_bytes": "100"}).disk is None


def test_asking_whether_an_id_is_held_finds_it_on_disk_after_a_restart(tmp_path):
    """What the SDK's image_size(), `samrt encode` and sam_encode ask (`peek`): the disk counts, so a
    restarted server answers "held" and encodes nothing (a fresh-eyes run found it re-encoding)."""
    cache = logic.EmbeddingCache(1 << 20, DiskTier(str(tmp_path), "model-a", 1 << 20))
    cache.put("a1", _entry(1))
    cache.disk.flush()
    restarted = logic.EmbeddingCache(1 << 20, DiskTier(str(tmp_path), "model-a", 1 << 20))
    found = restarted.peek("a1")
    assert found is not None
    _same(found, _entry(1))
    assert restarted.peek("zz9") is None


def test_engine_fingerprint_follows_content_and_companions(tmp_path):
    enc, dec = tmp_path / "m.encoder.onnx", tmp_path / "m.decoder.onnx"
    enc.write_bytes(b"enc")
    dec.write_bytes(b"dec")
    key = engine_fingerprint([str(enc), str(dec)])
    assert len(key) == 16 and key == engine_fingerprint([str(enc), str(dec)])
    (tmp_path / "m.encoder.onnx.data").write_bytes(b"weights")  # external data counts
    with_data = engine_fingerprint([str(enc), str(dec)])
    assert with_data != key
    (tmp_path / "m.encoder.onnx.data").write_bytes(b"other weights")
    assert engine_fingerprint([str(enc), str(dec)]) != with_data


def _fast_entry(seed=0, c=8, e=4, view=True):
    """An entry as the fast decoder caches it: image_tokens [HW,C] is the embedding [C,E,E] transposed."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((c, e, e)).astype(np.float32)
    tokens = np.ascontiguousarray(emb.reshape(c, -1).T)
    state = {"image_tokens": tokens, "t2i_values": rng.integers(0, 60000, (e * e, c // 2), dtype=np.uint16)}
    return logic.CacheEntry(tokens.T.reshape(emb.shape) if view else emb, (480, 640), state)


@pytest.mark.parametrize("view", [True, False])
def test_an_embedding_the_state_holds_as_image_tokens_is_written_once(tmp_path, view):
    entry = _fast_entry(3, view=view)
    tier = _tier(tmp_path)
    tier.write("abc123", entry)
    size = os.path.getsize(_file(tier, "abc123"))
    state_bytes = sum(a.nbytes for a in entry.image_state.values())
    assert state_bytes <= size < state_bytes + entry.embeddings.nbytes  # the header, not a second embedding
    back = _load(_tier(tmp_path), "abc123")
    _same(back, entry)
    assert np.shares_memory(back.embeddings, back.image_state["image_tokens"])  # a view, as the decoder makes it
    assert back.nbytes == state_bytes  # the memory tier counts one copy


def test_image_tokens_that_differ_from_the_embedding_are_both_kept(tmp_path):
    entry = _fast_entry(4)
    other = logic.CacheEntry(entry.embeddings + 1.0, entry.original_size, entry.image_state)
    tier = _tier(tmp_path)
    tier.write("abc123", other)
    assert os.path.getsize(_file(tier, "abc123")) > sum(a.nbytes for a in entry.image_state.values()) + other.embeddings.nbytes
    _same(_load(_tier(tmp_path), "abc123"), other)


def test_a_format_1_file_with_both_copies_is_still_read(tmp_path, monkeypatch):
    from samrt.model_repository import disk_cache
    entry = _fast_entry(5)
    tier = _tier(tmp_path)
    monkeypatch.setattr(disk_cache, "FORMAT_VERSION", 1)
    monkeypatch.setattr(disk_cache, "_tokens_hold_embedding", lambda entry: False)  # format 1 wrote both
    tier.write("abc123", entry)
    monkeypatch.undo()
    with open(_file(tier, "abc123"), "rb") as f:
        assert f.read(12)[8:] == (1).to_bytes(4, "little")
    _same(_load(_tier(tmp_path), "abc123"), entry)


def test_a_derived_embedding_whose_shape_does_not_fit_its_tokens_is_a_miss(tmp_path):
    import json
    tier = _tier(tmp_path)
    tier.write("abc123", _fast_entry(6))
    path = _file(tier, "abc123")
    data = open(path, "rb").read()
    n = int.from_bytes(data[12:16], "little")
    header = json.loads(data[16:16 + n])
    header["embeddings_shape"] = [4, 8, 4]  # the right size, the wrong channel count
    new = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(data[:12] + len(new).to_bytes(4, "little") + new + data[16 + n:])
    assert _load(_tier(tmp_path), "abc123") is None
