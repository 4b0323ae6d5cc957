"""samrt.export.training: train a small SAM (the official classes) on generated scenes, following
the paper's recipe (needs the `train` extra).

Per step B scenes are encoded once; K targets per scene are prompted with a foreground point or a
noisy box (sigma 10% of the box side, at most 20 px); then further points are sampled from the
error region with the previous low-res logits as mask prompt. A first point uses multimask output
and back-propagates only the lowest-loss mask; a first box and later rounds use the single mask
token. Loss: focal and dice 20:1 on masks, MSE on the IoU head.

Modules, by job: `options` (TrainOptions, SMALL_CONFIG), `feed` (each step's scenes, in worker
processes or not; batch tensors), `losses`, `clicks` (error-region correction clicks), `step`
(one step's loss), `loop` (lr schedule, state files, train()), `provenance` (the run record
`<out>.train.json`), `cards` (the model card written from those records).
"""

from .cards import write_model_card
from .clicks import error_points
from .feed import SceneFeed, collate
from .loop import lr_at, train
from .losses import dice_loss, focal_loss, mask_iou, round1_selection
from .options import SMALL_CONFIG, TrainOptions
from .provenance import init_provenance
from .step import train_step

__all__ = [
    "SMALL_CONFIG",
    "TrainOptions",
    "train",
    "train_step",
    "lr_at",
    "SceneFeed",
    "collate",
    "focal_loss",
    "dice_loss",
    "mask_iou",
    "round1_selection",
    "error_points",
    "init_provenance",
    "write_model_card",
]
