"""Checkpoint loading: detection from tensor shapes and the clear error for each bad file."""

import dataclasses

import pytest
import torch

from samrt.errors import CheckpointError, ModelTypeMismatchError
from samrt.export import build_sam, config_from_state_dict, load_sam, load_state_dict, random_sam
from samrt.spec import MODEL_CONFIGS, get_config


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "tiny"])
def test_model_type_is_detected_from_shapes(name):
    # Shapes only: a meta-device model gives the official state-dict layout without memory.
    with torch.device("meta"):
        sd = build_sam(get_config(name)).state_dict()
    assert config_from_state_dict(sd) == MODEL_CONFIGS[name]


def test_custom_config_is_detected():
    cfg = dataclasses.replace(get_config("tiny"), model_type="custom", image_size=512,
                              encoder_global_attn_indexes=(0, 2), encoder_num_heads=6)
    with torch.device("meta"):
        sd = build_sam(cfg).state_dict()
    assert config_from_state_dict(sd) == cfg


def test_load_roundtrip(tiny_sam, tiny_checkpoint):
    sam, cfg = load_sam(tiny_checkpoint, "tiny")
    assert cfg.model_type == "tiny"
    for (k, a), (_, b) in zip(sam.state_dict().items(), tiny_sam.state_dict().items()):
        assert torch.equal(a, b), k
    assert load_sam(tiny_checkpoint)[1].model_type == "tiny"  # auto detection


def test_wrapped_training_checkpoint_loads(tiny_sam, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": tiny_sam.state_dict(), "step": 3}, path)
    assert load_sam(str(path))[1].model_type == "tiny"


def test_model_type_mismatch(tiny_checkpoint):
    with pytest.raises(ModelTypeMismatchError, match=r"holds tiny \(embed_dim 192.*asked for vit_b \(embed_dim 768"):
        load_sam(tiny_checkpoint, "vit_b")


def test_model_type_alias_names_vit_h(tiny_checkpoint):
    """--model-type default is vit_h (resolved by samrt.spec), so a tiny checkpoint does not match it."""
    with pytest.raises(ModelTypeMismatchError, match=r"asked for vit_h \(embed_dim 1280"):
        load_sam(tiny_checkpoint, "default")


def test_truncated_file(tiny_checkpoint, tmp_path):
    data = open(tiny_checkpoint, "rb").read()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"\({len(data) // 2} bytes\) cannot be read.*truncated"):
        load_state_dict(str(path))


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2), "fc.bias": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"not a SAM checkpoint: it has 2 entries \(first: \['conv1.weight'"):
        load_state_dict(str(path))


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="got a list, expected a dict of tensors"):
        load_state_dict(str(path))


class NotATensor:
    """An arbitrary class: weights_only loading must refuse to unpickle it."""


def test_arbitrary_pickle_is_refused(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"obj": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="not a plain state dict of tensors"):
        load_state_dict(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_state_dict(str(tmp_path / "nope.pth"))


def test_random_init_is_seeded_and_fills_position_tables(tiny_cfg):
    a, b = random_sam(tiny_cfg, seed=3), random_sam(tiny_cfg, seed=3)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    assert a.image_encoder.pos_embed.abs().min() > 0
    assert a.image_encoder.blocks[0].attn.rel_pos_h.abs().sum() > 0
    assert not torch.equal(random_sam(tiny_cfg, seed=4).image_encoder.pos_embed, a.image_encoder.pos_embed)


def test_resize_image_input_retargets_only_the_position_tables():
    from segment_anything.modeling.image_encoder import get_rel_pos

    from samrt.export import resize_image_input

    cfg = dataclasses.replace(get_config("tiny"), model_type="custom", image_size=256)  # 16x16 patch grid
    sd = random_sam(cfg, seed=3).state_dict()
    out = resize_image_input(sd, 512)
    new = config_from_state_dict(out)
    assert new == dataclasses.replace(cfg, image_size=512)
    build_sam(new).load_state_dict(out)  # strict: every tensor has the 512 px model's shape
    changed = {k for k in sd if not torch.equal(sd[k], out[k])}
    tables = {"image_encoder.pos_embed"} | {f"image_encoder.blocks.{i}.attn.rel_pos_{a}"
                                            for i in cfg.encoder_global_attn_indexes for a in "hw"}
    assert changed == tables  # windowed blocks, neck, prompt encoder and decoder are untouched
    # A global block's table is resampled exactly as segment_anything resamples one at run time.
    key = f"image_encoder.blocks.{cfg.encoder_global_attn_indexes[0]}.attn.rel_pos_h"
    grid = 512 // cfg.patch_size
    expected = get_rel_pos(grid, grid, sd[key])  # [q, k, head_dim] from the 31-row table
    rebuilt = out[key][(torch.arange(grid)[:, None] - torch.arange(grid)[None, :] + grid - 1)]
    torch.testing.assert_close(rebuilt, expected, rtol=0, atol=1e-6)
    # A constant position embedding stays constant; the same size is the identity.
    flat = dict(sd, **{"image_encoder.pos_embed": torch.full_like(sd["image_encoder.pos_embed"], 0.25)})
    torch.testing.assert_close(resize_image_input(flat, 384)["image_encoder.pos_embed"],
                               torch.full((1, 24, 24, cfg.encoder_embed_dim), 0.25))
    assert all(torch.equal(sd[k], v) for k, v in resize_image_input(sd, 256).items())


def test_resize_image_input_wants_a_multiple_of_the_patch():
    from samrt.export import resize_image_input

    with torch.device("meta"):
        sd = build_sam(get_config("tiny")).state_dict()
    with pytest.raises(CheckpointError, match="image size 500: expected a multiple of the patch size 16"):
        resize_image_input(sd, 500)
