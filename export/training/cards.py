"""MODEL_CARD.md for a checkpoint trained by samrt: data, recipe, steps, time, evaluation.

It reads the run record train() writes (`<checkpoint>.train.json`, see `provenance.py`), whose
"init" entries chain back through every stage the checkpoint continued from."""

from __future__ import annotations

import hashlib
import json
import os

__all__ = ["write_model_card"]


def _stages(train: dict) -> list:
    """The runs behind a checkpoint, oldest first: each continued (--init) from the one before."""
    chain, node = [], train
    while node:
        chain.append(node)
        node = node.get("init")
    return [c for c in reversed(chain) if c.get("steps") is not None]


def _where(stage: dict, machine: str) -> str:
    """The machine a stage ran on: recorded by `samrt train` since it learned --device; older
    stages (CPU only) fall back to the `machine` the card writer names."""
    return stage.get("device") or f"{machine}, {stage.get('threads')} threads"


def _input_size(stage: dict) -> int:
    # Stages recorded before `samrt train --image-size` existed carry no config: all ran at 256 px.
    return int(stage.get("config", {}).get("image_size", 256))


def _schedule(train: dict, machine: str) -> str:
    stages = _stages(train)
    lines = []
    for i, st in enumerate(stages):
        o = st["options"]
        size = _input_size(st)
        if i == 0:
            how = "from random init"
        else:
            resized = _input_size(stages[i - 1])
            how = (f"continued from stage {i}'s weights (fresh optimizer, new scene stream"
                   + (f"; position tables resized from {resized} px)" if resized != size else ")"))
        lo, hi = o.get("scene_long_side", (256, 256))
        a0, a1 = o.get("aspect_range", (0.6, 1.67))
        loss = f", mask loss on a {o['loss_size']}² grid" if o.get("loss_size") else ""
        lines.append(f"- Stage {i + 1}, {how}: {st['steps']} steps in {st['elapsed_s'] / 60:.0f} minutes on "
                     f"{_where(st, machine)}; input {size} px{loss}; {o['batch_images']} scenes × "
                     f"{o['prompts_per_image']} targets per step, {o.get('correction_rounds', 2)} correction rounds, "
                     f"scenes drawn at a long side of {lo}–{hi} px and aspect {a0}–{a1}; peak lr {o['lr']}, "
                     f"warm-up {o['warmup']}, scene stream {o['seed']}, curriculum {o['curriculum_steps']} steps.")
    total_steps = sum(st["steps"] for st in stages)
    by_machine: dict = {}
    for st in stages:
        where = _where(st, machine)
        by_machine[where] = by_machine.get(where, 0.0) + st["elapsed_s"] / 60
    spent = ", ".join(f"{m:.0f} minutes on {w}" for w, m in by_machine.items())
    lines.append(f"- In all: {total_steps} steps; {spent}. `samrt train`.")
    return "\n".join(lines)


def write_model_card(checkpoint: str, train_json: str, eval_json: str, out_md: str, machine: str,
                     status: str = "") -> str:
    """Writes the card of `checkpoint` to `out_md` and returns `out_md`.

    `train_json`: the run record train() wrote (`<checkpoint>.train.json`); `eval_json`: the
    figures `samrt eval` wrote; `machine`: the name of the machine of stages recorded before
    `samrt train` recorded its device; `status`: a closing section in the writer's words (e.g.
    whether the model meets its target). Overwrites `out_md`."""
    with open(train_json) as f:
        train = json.load(f)
    with open(eval_json) as f:
        ev = json.load(f)
    cfg, opts = train["config"], train["options"]
    first = _stages(train)[0]["options"]
    digest = hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    clicks = ", ".join(f"{k} click{'s' if k != '1' else ''}: {v:.3f}" for k, v in ev["miou_clicks"].items())
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in ev["miou_1pt_oracle_by_kind"].items())
    text = f"""# samrt_small: a small SAM trained by samrt on generated scenes

`{os.path.basename(checkpoint)}` (sha256 `{digest[:16]}…`, {os.path.getsize(checkpoint) / 2**20:.1f} MiB) is a
plain state dict in the official segment-anything layout; samrt loads it like any checkpoint
(`samrt export --checkpoint ...`, model type detected from its shapes).

## Architecture (the official `segment_anything` classes)
- Image encoder: ViT, embed {cfg['encoder_embed_dim']}, depth {cfg['encoder_depth']}, {cfg['encoder_num_heads']} heads,
  global attention at blocks {cfg['encoder_global_attn_indexes']}, window {cfg['window_size']}, patch {cfg['patch_size']},
  input {cfg['image_size']}×{cfg['image_size']} → embedding {cfg['prompt_embed_dim']}×{cfg['image_size'] // cfg['patch_size']}².
- Prompt encoder and mask decoder: the standard ones (transformer dim {cfg['prompt_embed_dim']}, depth
  {cfg['decoder_depth']}, MLP {cfg['decoder_mlp_dim']}, {cfg['decoder_num_heads']} heads, 3 multimask outputs + 1), low-res masks
  {4 * cfg['image_size'] // cfg['patch_size']}².

## Data
Generated scenes (`samrt.scenes`): ellipses, rotated rectangles, convex polygons, concave stars,
rings with holes, thin bars; flat, striped, checkered and noisy textures; occlusion by drawing
order; sizes from {opts['size_range'][0]:.0%} to {opts['size_range'][1]:.0%} of the short side; textured, cluttered
backgrounds; objects with a distinct part (whole and part are both instances). Training scenes
come from seed stream(s) {', '.join(str(st['options']['seed']) for st in _stages(train))} (a fresh scene every step, never repeated); the evaluation set
from a separate stream (`samrt.scenes.EVAL_SEED`).

## Recipe (the SAM paper's, scaled down)
- Per step B scenes × K targets (per stage below); first prompt a foreground point or a noisy box
  (σ = 10% of the box side, at most 20 px, in the scene's pixels), then correction rounds (per stage below) with a point sampled from the
  error region and the previous low-res logits as mask prompt.
- Each scene is resized (longest side) to the input like any served image; the loss compares the
  upsampled logits with the ground truth's area coverage at the input resolution, or on a coarser
  grid where a stage says so (`samrt.scenes.train_data`).
- A first point is ambiguous: multimask output, only the lowest-loss mask back-propagated. A
  first box and the later rounds train the single-mask token (what SamPredictor answers them with). Loss: focal (γ 2, no α weighting) and dice 20:1; the IoU head with MSE.
- AdamW, linear warm-up then cosine decay to 0 (peak lr and warm-up per stage below), weight decay {opts['weight_decay']}, gradient clip 1.0.
- Curriculum: the first {first['curriculum_steps']} steps use large objects ({first['curriculum_size_range'][0]:.0%}–{first['curriculum_size_range'][1]:.0%} of the
  short side): from scratch, a decoder shown mostly small objects stays at "no mask" for hundreds of steps.
{_schedule(train, machine)}

## Evaluation (held-out: {ev['num_scenes']} scenes, {ev['num_objects']} objects; `samrt eval`)
| metric | mIoU |
| --- | --- |
| one centre point, predicted-best of 3 | {ev['miou_1pt_best']:.3f} |
| one centre point, oracle best of 3 | {ev['miou_1pt_oracle']:.3f} |
| ground-truth box | {ev['miou_box']:.3f} |

Against the number of clicks (later clicks at the centre of the error region): {clicks}.
One-point oracle mIoU by kind: {kinds}. Objects with IoU ≥ 0.8 from one point (oracle):
{ev['frac_objects_iou_ge_0.8_1pt_oracle']:.0%}.

## Limits
Trained only on synthetic shapes: it is a test and demonstration model for samrt's pipeline,
not a general segmenter. Its masks on photographs mean little.
""" + (f"\n## Status\n{status.strip()}\n" if status else "")
    with open(out_md, "w") as f:
        f.write(text)
    return out_md
