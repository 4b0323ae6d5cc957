"""What a training run is: the shipped model's configuration and the run's options."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from samrt.scenes import TRAIN_SEED
from samrt.spec import SamConfig

__all__ = ["SMALL_CONFIG", "TrainOptions"]

# The shipped model: small ViT image encoder at 256 px input, the standard prompt encoder and
# mask decoder (256-d two-way transformer, 2 layers, 8 heads, MLP 2048).
SMALL_CONFIG = SamConfig(
    model_type="samrt_small",
    encoder_embed_dim=192,
    encoder_depth=6,
    encoder_num_heads=6,
    encoder_global_attn_indexes=(2, 5),
    image_size=256,
    patch_size=16,
    window_size=8,
)


@dataclasses.dataclass
class TrainOptions:
    steps: int = 2400
    batch_images: int = 4
    prompts_per_image: int = 4
    correction_rounds: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 150
    seed: int = TRAIN_SEED
    threads: int = 0
    checkpoint_every: int = 100
    max_minutes: float = 0.0  # stop (resumably) after this long; 0 = no limit
    # Curriculum: large objects first (a decoder trained from scratch on ~1%-of-image objects
    # collapses to "no mask" for hundreds of steps), then the full size range.
    curriculum_steps: int = 800
    curriculum_size_range: Tuple[float, float] = (0.3, 0.9)
    size_range: Tuple[float, float] = (0.08, 0.8)
    # Scenes are drawn at a long side in this range and an aspect ratio (w/h) in that one, then
    # resized to the input. (192, 640) and (0.5, 2.0) is how the held-out set is drawn (from
    # another seed stream); (256, 256) draws at the input size, the cheapest on a CPU.
    scene_long_side: Tuple[int, int] = (256, 256)
    aspect_range: Tuple[float, float] = (0.6, 1.67)
    device: str = "cpu"
    workers: int = 0  # scene-generating processes (0: in the training process)
    # Side of the grid the mask loss is computed on: 0 = the input size. A smaller one (a divisor
    # of the input size, at least the low-res mask side) compares the logits with the targets'
    # area coverage pooled to that grid: at 512 px input, 256 keeps ~half the step time on a CPU.
    loss_size: int = 0
