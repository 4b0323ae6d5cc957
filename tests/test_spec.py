import pytest

from samrt.spec import (MODEL_ALIASES, MODEL_CONFIGS, MODEL_TYPE_CHOICES, SamConfig, decoder_spec, encoder_spec,
                        get_config, resolve_model_type)


def test_official_contract_vit_b():
    cfg = get_config("vit_b")
    enc, dec = encoder_spec(cfg), decoder_spec(cfg)
    assert [(t.name, t.dtype, t.shape) for t in enc.inputs] == [("image", "float32", ("batch", 3, 1024, 1024))]
    assert [(t.name, t.shape) for t in enc.outputs] == [("image_embeddings", ("batch", 256, 64, 64))]
    assert [(t.name, t.shape) for t in dec.inputs] == [
        ("image_embeddings", ("num_prompts", 256, 64, 64)),
        ("point_coords", ("num_prompts", "num_points", 2)),
        ("point_labels", ("num_prompts", "num_points")),
        ("mask_input", ("num_prompts", 1, 256, 256)),
        ("has_mask_input", ("num_prompts",)),
    ]
    assert [(t.name, t.shape) for t in dec.outputs] == [
        ("low_res_masks", ("num_prompts", 4, 256, 256)),
        ("iou_predictions", ("num_prompts", 4)),
    ]
    assert all(t.dtype == "float32" for t in dec.inputs + dec.outputs)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_configs_share_the_contract(name):
    cfg = get_config(name)
    assert (cfg.image_size, cfg.embedding_size, cfg.low_res_size, cfg.num_mask_tokens) == (1024, 64, 256, 4)


def test_spec_follows_config():
    cfg = SamConfig("small", 64, 2, 2, (1,), image_size=256)
    dec = decoder_spec(cfg)
    assert dec.tensor("image_embeddings").shape == ("num_prompts", 256, 16, 16)
    assert dec.tensor("mask_input").shape == ("num_prompts", 1, 64, 64)
    assert dec.tensor("point_coords").concrete_shape(num_prompts=3, num_points=5) == (3, 5, 2)
    assert dec.tensor("point_coords").dynamic_axes == {0: "num_prompts", 1: "num_points"}


def test_config_roundtrip_and_unknown_type():
    for cfg in MODEL_CONFIGS.values():
        assert SamConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(KeyError, match="unknown model type 'vit_x'.*expected one of"):
        get_config("vit_x")


def test_aliases_resolve_in_one_place():
    """segment_anything's registry calls vit_h "default"; get_config and resolve_model_type accept it."""
    assert MODEL_ALIASES == {"default": "vit_h"}
    assert resolve_model_type("default") == "vit_h" and get_config("default") is MODEL_CONFIGS["vit_h"]
    assert [resolve_model_type(t) for t in ("auto", None, "vit_b", "tiny")] == ["auto", None, "vit_b", "tiny"]
    assert MODEL_TYPE_CHOICES == ("auto", "default", "vit_h", "vit_l", "vit_b", "tiny")
    with pytest.raises(KeyError, match=r"unknown model type 'vit_x'; expected one of \['auto', 'default'"):
        resolve_model_type("vit_x")
    with pytest.raises(KeyError, match="unknown model type 'auto'"):  # a type to build, not "detect it"
        get_config("auto")
