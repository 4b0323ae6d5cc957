"""samrt.scenes: generated scenes with exact ground truth, the held-out evaluation on them, and
the training samples drawn from them (numpy + PIL; scipy and tqdm inside the functions that use
them).

- `generate`: synthetic scenes (`generate_scene`, `scene_for_index`, the seed streams).
- `evaluation`: the SAM paper's point/box figures on the held-out scenes (`evaluate`).
- `train_data`: one training sample per scene (`training_sample`).

Floor "scenes" (`samrt.layers`): imports the core only; export, engines, the server and the
applications may import it.
"""

from .evaluation import centre_point, eval_scenes, evaluate, next_click
from .generate import EVAL_SEED, TRAIN_SEED, Scene, generate_scene, scene_for_index
from .train_data import SceneSampling, TrainingSample, noisy_box, sample_point, training_sample

__all__ = ["Scene", "generate_scene", "scene_for_index", "EVAL_SEED", "TRAIN_SEED",
           "eval_scenes", "centre_point", "next_click", "evaluate",
           "SceneSampling", "TrainingSample", "training_sample", "noisy_box", "sample_point"]
