"""Generated scenes and the evaluation metrics (training: tests/export/training/)."""

import numpy as np

from samrt.scenes import centre_point, evaluate, next_click
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
