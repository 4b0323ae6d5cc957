"""Generated scenes, the evaluation metrics, and training (two steps, then a resume)."""

import json
import os

import numpy as np
import pytest

from samrt.evaluation import centre_point, evaluate, next_click
from samrt.scenes import generate_scene, scene_for_index


def test_scenes_are_seeded_and_masks_are_exact():
    a, b = scene_for_index(3), scene_for_index(3)
    np.testing.assert_array_equal(a.image, b.image)
    for s in (scene_for_index(i) for i in range(12)):
        h, w = s.image.shape[:2]
        assert s.image.dtype == np.uint8 and len(s.masks) == len(s.kinds) == len(s.parent) >= 1
        for m, kind, parent in zip(s.masks, s.kinds, s.parent):
            assert m.shape == (h, w) and m.dtype == bool and m.sum() >= 24
            if parent >= 0:  # a part lies inside its whole
                assert kind == "part" and not (m & ~s.masks[parent]).any()
    kinds = {k for i in range(40) for k in scene_for_index(i).kinds}
    assert kinds >= {"ellipse", "rectangle", "polygon", "star", "ring", "bar", "part"}


def test_any_size_and_aspect():
    s = generate_scene(np.random.default_rng(0), 37, 300)
    assert s.image.shape == (37, 300, 3)


class _Oracle:
    """Returns the (single) ground truth, or nothing: exercises the metric code, not a model."""

    def __init__(self, scene_masks, empty=False):
        self.masks, self.empty = scene_masks, empty

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        gt = self.masks[0] if not self.empty else np.zeros(self.shape, bool)
        n = 3 if multimask_output else 1
        return np.stack([gt] * n), np.linspace(1, 0.5, n), np.zeros((n, 64, 64), np.float32)


def test_metrics_on_perfect_and_empty_predictions():
    scene = scene_for_index(5)
    scene.masks = [m for m, p in zip(scene.masks, scene.parent) if p < 0][:1]  # one object
    scene.kinds, scene.parent = scene.kinds[:1], [-1]
    perfect = evaluate(_Oracle(scene.masks), [scene])
    assert perfect["miou_1pt_oracle"] == perfect["miou_box"] == perfect["miou_clicks"]["5"] == 1.0
    empty = evaluate(_Oracle(scene.masks, empty=True), [scene])
    assert empty["miou_1pt_oracle"] == 0.0 and empty["frac_objects_iou_ge_0.8_1pt_oracle"] == 0.0


def test_centre_point_and_next_click():
    m = np.zeros((20, 30), bool)
    m[5:15, 5:25] = True
    x, y = centre_point(m)
    assert m[int(y), int(x)] and 8 <= y <= 11
    (cx, cy), label = next_click(np.zeros_like(m), m)
    assert label == 1 and m[int(cy), int(cx)]
    assert next_click(m, m) is None


def test_train_two_steps_then_resume(tmp_path):
    from samrt.export import load_sam
    from samrt.export.train import TrainOptions, train
    from samrt.spec import SamConfig

    cfg = SamConfig("mini", 32, 1, 1, (0,), image_size=64, window_size=2, decoder_mlp_dim=64)
    out = str(tmp_path / "mini.pth")
    opts = TrainOptions(steps=2, batch_images=1, prompts_per_image=2, correction_rounds=1, checkpoint_every=1,
                        warmup=1, curriculum_steps=1)
    summary = train(out, opts, cfg)
    assert summary["steps"] == 2 and os.path.isfile(out + ".state")
    summary = train(out, TrainOptions(**{**opts.__dict__, "steps": 3}), cfg)  # resumes at step 2
    history = json.load(open(out + ".train.json"))["history"]
    assert summary["steps"] == 3 and [h["step"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) for h in history)
    sam, detected = load_sam(out)  # the official layout: loads like any checkpoint
    assert detected.encoder_embed_dim == 32 and detected.image_size == 64

    from segment_anything import SamPredictor

    from samrt.evaluation import eval_scenes
    from samrt.export.model_card import write_model_card

    figures = evaluate(SamPredictor(sam), eval_scenes(1))
    assert 0.0 <= figures["miou_1pt_oracle"] <= 1.0 and set(figures["miou_clicks"]) == {"1", "2", "3", "5"}
    json.dump(figures, open(tmp_path / "eval.json", "w"))
    card = open(write_model_card(out, out + ".train.json", str(tmp_path / "eval.json"), str(tmp_path / "CARD.md"),
                                 "a test machine")).read()
    assert "3 steps" in card and "oracle best of 3" in card and "embed 32" in card

    # A second stage continued from the first: the card lists both and adds them up.
    out2 = str(tmp_path / "mini2.pth")
    train(out2, TrainOptions(**{**opts.__dict__, "steps": 1, "seed": 7}), cfg, init=out)
    stage2 = json.load(open(out2 + ".train.json"))
    assert stage2["init"]["path"] == "mini.pth" and stage2["init"]["steps"] == 3
    assert stage2["init"]["device"].startswith("cpu")  # where stage 1 ran travels with it
    card = open(write_model_card(out2, out2 + ".train.json", str(tmp_path / "eval.json"), str(tmp_path / "CARD2.md"),
                                 "a test machine")).read()
    assert "Stage 1, from random init: 3 steps" in card and "Stage 2, continued" in card
    assert "In all: 4 steps" in card and "seed stream(s) 1, 7" in card


def test_train_from_init_uses_the_checkpoints_positional_encoding(tmp_path, monkeypatch):
    """The decoder wrapper caches the dense PE; it must come from --init, not from the seed's init."""
    import torch

    from samrt.export import train as train_mod
    from samrt.export.checkpoint import build_sam
    from samrt.spec import SamConfig

    cfg = SamConfig("mini", 32, 1, 1, (0,), image_size=64, window_size=2, decoder_mlp_dim=64)
    torch.manual_seed(123)
    init = build_sam(cfg)
    torch.save(init.state_dict(), tmp_path / "init.pth")
    seen = []
    real_step = train_mod.train_step

    def spy(sam, decoder, *args, **kwargs):
        seen.append((decoder.image_pe.clone(), sam.prompt_encoder.get_dense_pe().detach().clone()))
        return real_step(sam, decoder, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", spy)
    opts = train_mod.TrainOptions(steps=1, batch_images=1, prompts_per_image=1, correction_rounds=0, warmup=1,
                                  curriculum_steps=0, seed=5)
    train_mod.train(str(tmp_path / "out.pth"), opts, cfg, init=str(tmp_path / "init.pth"))
    wrapper_pe, model_pe = seen[0]
    assert torch.equal(wrapper_pe, model_pe)
    assert torch.equal(model_pe, init.prompt_encoder.get_dense_pe().detach())


def test_error_points_come_from_the_error_region_with_the_right_label():
    import torch

    from samrt.export.train import error_points

    target = torch.zeros(3, 8, 8, dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    pred = target.clone()
    pred[0, 2:6, 2:4] = False  # missed foreground only: a positive click inside it
    pred[1, 0, :] = True  # false background only: a negative click on row 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        coords, labels = error_points(pred, target, gen)
        assert coords.shape == (3, 1, 2) and labels.shape == (3, 1)
        x, y = coords[0, 0].long().tolist()
        assert labels[0, 0] == 1 and 2 <= x < 4 and 2 <= y < 6
        x, y = coords[1, 0].long().tolist()
        assert labels[1, 0] == 0 and y == 0
        assert labels[2, 0] == -1  # no error: a padding point, no new information


def test_scene_workers_give_the_same_training_as_the_training_process(tmp_path):
    import torch

    from samrt.export.train import TrainOptions, train
    from samrt.spec import SamConfig

    cfg = SamConfig("mini", 32, 1, 1, (0,), image_size=64, window_size=2, decoder_mlp_dim=64)
    opts = dict(steps=2, batch_images=2, prompts_per_image=2, correction_rounds=1, warmup=1, curriculum_steps=1,
                scene_long_side=(96, 160), aspect_range=(0.5, 2.0))
    train(str(tmp_path / "a.pth"), TrainOptions(**opts, workers=0), cfg)
    train(str(tmp_path / "b.pth"), TrainOptions(**opts, workers=2), cfg)
    a, b = torch.load(tmp_path / "a.pth"), torch.load(tmp_path / "b.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rec = json.load(open(tmp_path / "b.pth.train.json"))
    assert rec["device"].startswith("cpu") and rec["options"]["scene_long_side"] == [96, 160]
    assert [h["step"] for h in rec["history"]] == [1, 2] and rec["history"][1]["time_s"] > 0


def test_round1_trains_a_box_on_the_single_mask_token_and_a_point_on_its_best_of_three():
    import torch

    from samrt.export.train import round1_selection

    loss = torch.tensor([[0.1, 0.9, 0.2, 0.5],   # point: best multimask token is 2 (token 0 is not a candidate)
                         [0.9, 0.1, 0.2, 0.3]])  # box: token 0 even though token 1 has the lower loss
    best, trained = round1_selection(loss, torch.tensor([False, True]))
    assert best.tolist() == [2, 0]
    assert trained.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]


def test_train_at_a_larger_input_from_a_smaller_model_with_a_coarser_loss_grid(tmp_path):
    """--image-size with an --init of another size resizes the position tables; --loss-size pools
    the targets; a resumable state of one input size refuses a run of another."""
    import dataclasses

    import pytest
    import torch

    from samrt.export import load_sam
    from samrt.export.checkpoint import build_sam
    from samrt.export.train import TrainOptions, train
    from samrt.spec import SamConfig

    small = SamConfig("mini", 32, 1, 1, (0,), image_size=64, window_size=2, decoder_mlp_dim=64)
    torch.manual_seed(0)
    torch.save(build_sam(small).state_dict(), tmp_path / "init64.pth")
    big = dataclasses.replace(small, image_size=128)
    out = str(tmp_path / "big.pth")
    opts = TrainOptions(steps=1, batch_images=1, prompts_per_image=2, correction_rounds=1, warmup=1,
                        curriculum_steps=0, seed=5, loss_size=64)
    summary = train(out, opts, big, init=str(tmp_path / "init64.pth"))
    assert summary["options"]["loss_size"] == 64 and np.isfinite(summary["last_100"]["loss"])
    assert load_sam(out)[1].image_size == 128
    from samrt.export.model_card import write_model_card

    figures = {"num_scenes": 1, "num_objects": 2, "miou_1pt_best": 0.5, "miou_1pt_oracle": 0.6, "miou_box": 0.7,
               "miou_clicks": {"1": 0.5}, "miou_1pt_oracle_by_kind": {"ring": 0.6},
               "frac_objects_iou_ge_0.8_1pt_oracle": 0.5}  # the card's input format; the figures are made up
    json.dump(figures, open(tmp_path / "eval.json", "w"))
    card = open(write_model_card(out, out + ".train.json", str(tmp_path / "eval.json"), str(tmp_path / "CARD.md"),
                                 "a test machine")).read()
    assert "input 128×128" in card and "input 128 px, mask loss on a 64² grid" in card
    with pytest.raises(ValueError, match="expected a divisor of the input size 128"):
        train(str(tmp_path / "odd.pth"), dataclasses.replace(opts, loss_size=48), big)
    with pytest.raises(ValueError, match="same --image-size as the run it resumes"):
        train(out, dataclasses.replace(opts, steps=2), small, state_path=out + ".state")
