"""The wire API is declared once (samrt.wire); the table in docs/wire-api.md, the rendered configs
and the SDK's requests derive from it."""

import os
import re

import numpy as np

from samrt import wire
from samrt.client._client import decode_inputs, encode_inputs, segment_inputs

WIRE_PAGE = os.path.join(os.path.dirname(__file__), "..", "docs", "wire-api.md")


def test_documented_wire_table_is_the_declaration():
    text = open(WIRE_PAGE).read()
    block = re.search(r"<!-- wire-table:[^\n]*-->\n(.*?)\n<!-- /wire-table -->", text, re.S)
    assert block, "docs/wire-api.md has no generated wire table"
    assert block.group(1) == wire.markdown_table(), "docs/wire-api.md's wire table differs: regenerate with python -m samrt.wire"


def test_rendered_configs_carry_the_declared_tensors(tiny_cfg, tiny_export):
    from samrt.model_repository.render import RepoOptions, model_configs

    configs = {**model_configs(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path, RepoOptions()),
               **model_configs(tiny_cfg, tiny_export.encoder_path, tiny_export.decoder_path,
                               RepoOptions(native="onnxruntime"))}  # the production variant's own steps
    sizes = wire.config_sizes(tiny_cfg)
    for name, model in wire.MODELS.items():
        cfg = configs[name]
        for kind, tensors in (("input", model.inputs), ("output", model.outputs)):
            got = [(t["name"], t["data_type"], t["dims"], t.get("optional", False)) for t in cfg[kind]]
            want = [(t.name, t.config_type, t.config_dims(sizes), t.optional) for t in tensors]
            assert got == want, (name, kind)
        assert (cfg["max_batch_size"] > 0) == (model.batch is not None)


def test_sdk_requests_are_packed_as_declared():
    inputs = decode_inputs("abc", [[1, 2]], [1], np.zeros((1, 256, 256)), True, ["masks"])
    inputs.update(encode_inputs(np.zeros((4, 5, 3), np.uint8), None))
    inputs.update(segment_inputs(np.zeros((4, 5, 3), np.uint8), [[1, 2]], [1], False))
    inputs.update(encode_inputs(None, b"png bytes"))
    declared = {t.name: t for m in wire.PUBLIC_MODELS for t in m.inputs}
    for name, (array, datatype) in inputs.items():
        assert datatype == declared[name].datatype and array.dtype == declared[name].numpy_dtype, name


def test_image_id_is_a_pixel_hash():
    a = np.zeros((2, 2, 3), np.uint8)
    assert wire.image_id_of(a) == wire.image_id_of(a.copy()) != wire.image_id_of(np.zeros((2, 3, 3), np.uint8))


def test_decode_takes_the_encode_result_or_its_id():
    import pytest

    from samrt.client._client import EncodeResult
    from samrt.errors import InputError

    a = decode_inputs("abc", [[1, 2]], [1], None, True, ["masks"])
    b = decode_inputs(EncodeResult("abc", (4, 5)), [[1, 2]], [1], None, True, ["masks"])
    assert a["image_id"][0].tolist() == b["image_id"][0].tolist() == [[b"abc"]]
    with pytest.raises(InputError, match="image_id: got int, expected the str id"):
        decode_inputs(3, [[1, 2]], [1], None, True, ["masks"])
