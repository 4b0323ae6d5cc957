"""Training runs: two steps then a resume, --init, scene workers, another input size; the model card."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from samrt.scenes import eval_scenes, evaluate
from samrt.export import load_sam
from samrt.export.checkpoint import build_sam
from samrt.export.training import TrainOptions, lr_at, train, write_model_card
from samrt.export.training import loop
from samrt.spec import SamConfig

MINI = SamConfig("mini", 32, 1, 1, (0,), image_size=64, window_size=2, decoder_mlp_dim=64)


def test_train_two_steps_then_resume(tmp_path):
    out = str(tmp_path / "mini.pth")
    opts = TrainOptions(steps=2, batch_images=1, prompts_per_image=2, correction_rounds=1, checkpoint_every=1,
                        warmup=1, curriculum_steps=1)
    summary = train(out, opts, MINI)
    assert summary["steps"] == 2 and os.path.isfile(out + ".state")
    summary = train(out, dataclasses.replace(opts, steps=3), MINI)  # resumes at step 2
    history = json.load(open(out + ".train.json"))["history"]
    assert summary["steps"] == 3 and [h["step"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) for h in history)
    sam, detected = load_sam(out)  # the official layout: loads like any checkpoint
    assert detected.encoder_embed_dim == 32 and detected.image_size == 64

    figures = evaluate(SamPredictor(sam), eval_scenes(1))
    assert 0.0 <= figures["miou_1pt_oracle"] <= 1.0 and set(figures["miou_clicks"]) == {"1", "2", "3", "5"}
    json.dump(figures, open(tmp_path / "eval.json", "w"))
    card = open(write_model_card(out, out + ".train.json", str(tmp_path / "eval.json"), str(tmp_path / "CARD.md"),
                                 "a test machine")).read()
    assert "3 steps" in card and "oracle best of 3" in card and "embed 32" in card

    # A second stage continued from the first: the card lists both and adds them up.
    out2 = str(tmp_path / "mini2.pth")
    train(out2, dataclasses.replace(opts, steps=1, seed=7), MINI, init=out)
    stage2 = json.load(open(out2 + ".train.json"))
    assert stage2["init"]["path"] == "mini.pth" and stage2["init"]["steps"] == 3
    assert stage2["init"]["device"].startswith("cpu")  # where stage 1 ran travels with it
    card = open(write_model_card(out2, out2 + ".train.json", str(tmp_path / "eval.json"), str(tmp_path / "CARD2.md"),
                                 "a test machine")).read()
    assert "Stage 1, from random init: 3 steps" in card and "Stage 2, continued" in card
    assert "In all: 4 steps" in card and "seed stream(s) 1, 7" in card


def test_train_from_init_uses_the_checkpoints_positional_encoding(tmp_path, monkeypatch):
    """The decoder wrapper caches the dense PE; it must come from --init, not from the seed's init."""
    torch.manual_seed(123)
    init = build_sam(MINI)
    torch.save(init.state_dict(), tmp_path / "init.pth")
    seen = []
    real_step = loop.train_step

    def spy(sam, decoder, *args, **kwargs):
        seen.append((decoder.image_pe.clone(), sam.prompt_encoder.get_dense_pe().detach().clone()))
        return real_step(sam, decoder, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", spy)
    opts = TrainOptions(steps=1, batch_images=1, prompts_per_image=1, correction_rounds=0, warmup=1,
                        curriculum_steps=0, seed=5)
    train(str(tmp_path / "out.pth"), opts, MINI, init=str(tmp_path / "init.pth"))
    wrapper_pe, model_pe = seen[0]
    assert torch.equal(wrapper_pe, model_pe)
    assert torch.equal(model_pe, init.prompt_encoder.get_dense_pe().detach())


def test_scene_workers_give_the_same_training_as_the_training_process(tmp_path):
    opts = dict(steps=2, batch_images=2, prompts_per_image=2, correction_rounds=1, warmup=1, curriculum_steps=1,
                scene_long_side=(96, 160), aspect_range=(0.5, 2.0))
    train(str(tmp_path / "a.pth"), TrainOptions(**opts, workers=0), MINI)
    train(str(tmp_path / "b.pth"), TrainOptions(**opts, workers=2), MINI)
    a, b = torch.load(tmp_path / "a.pth"), torch.load(tmp_path / "b.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rec = json.load(open(tmp_path / "b.pth.train.json"))
    assert rec["device"].startswith("cpu") and rec["options"]["scene_long_side"] == [96, 160]
    assert [h["step"] for h in rec["history"]] == [1, 2] and rec["history"][1]["time_s"] > 0


def test_train_at_a_larger_input_from_a_smaller_model_with_a_coarser_loss_grid(tmp_path):
    """--image-size with an --init of another size resizes the position tables; --loss-size pools
    the targets; a resumable state of one input size refuses a run of another."""
    torch.manual_seed(0)
    torch.save(build_sam(MINI).state_dict(), tmp_path / "init64.pth")
    big = dataclasses.replace(MINI, image_size=128)
    out = str(tmp_path / "big.pth")
    opts = TrainOptions(steps=1, batch_images=1, prompts_per_image=2, correction_rounds=1, warmup=1,
                        curriculum_steps=0, seed=5, loss_size=64)
    summary = train(out, opts, big, init=str(tmp_path / "init64.pth"))
    assert summary["options"]["loss_size"] == 64 and np.isfinite(summary["last_100"]["loss"])
    assert load_sam(out)[1].image_size == 128

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
        train(out, dataclasses.replace(opts, steps=2), MINI, state_path=out + ".state")


def test_lr_warms_up_linearly_then_decays_to_zero():
    opts = TrainOptions(steps=110, lr=1.0, warmup=10)
    assert [lr_at(s, opts) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0], abs=1e-12)
    assert lr_at(10, opts) == pytest.approx(1.0, abs=1e-12)  # the cosine starts at the peak
    assert lr_at(60, opts) == pytest.approx(0.5, abs=1e-12)
    assert lr_at(110, opts) == pytest.approx(0.0, abs=1e-12) and lr_at(500, opts) == pytest.approx(0.0, abs=1e-12)


def test_train_never_overwrites_weights_it_did_not_write(tmp_path):
    from samrt.artifacts import OutputDirError
    from samrt.export.training import TrainOptions, train

    theirs = tmp_path / "sam_vit_b_01ec64.pth"
    theirs.write_bytes(b"someone's weights")
    with pytest.raises(OutputDirError, match="not written by samrt train"):
        train(str(theirs), TrainOptions(steps=1))
    assert theirs.read_bytes() == b"someone's weights"
