"""The embedded samrt_small model, through the real Triton server, on held-out scenes."""


import numpy as np
import pytest

from samrt.artifacts import default_checkpoint

pytestmark = [pytest.mark.triton, pytest.mark.skipif(default_checkpoint() is None,
                                                     reason="no embedded samrt_small checkpoint in samrt/assets")]

CLICK_IOU = 0.8           # the bar for one click inside an object
MOST = 0.5                # "most objects": more than this fraction reach CLICK_IOU
AMG_MATCH_IOU = 0.5       # an object counts as recovered by AMG when a record overlaps it this much
AMG_RECOVERED = 0.5       # "most objects" for AMG


def test_a_click_inside_an_object_gives_its_mask(small_server):
    from samrt.client import SamClient, TritonSamPredictor
    from samrt.masks import mask_iou
    from samrt.scenes import centre_point, eval_scenes

    predictor = TritonSamPredictor(SamClient(small_server.grpc_url))
    ious = []
    for scene in eval_scenes(12):
        predictor.set_image(scene.image)
        for gt in scene.masks:
            masks, scores, _ = predictor.predict(np.array([centre_point(gt)]), np.array([1]))
            ious.append(max(mask_iou(m, gt) for m in masks))  # the oracle of 3, as the paper's figure
    ious = np.array(ious)
    assert len(ious) >= 30
    assert (ious >= CLICK_IOU).mean() > MOST, f"{(ious >= CLICK_IOU).mean():.2f} of {len(ious)} objects reach {CLICK_IOU}"


def test_automatic_masks_recover_most_objects(small_server):
    from samrt.client import SamClient, TritonSamAutomaticMaskGenerator
    from samrt.masks import mask_iou
    from samrt.scenes import eval_scenes

    # SAM's default filters (predicted IoU 0.88, stability 0.95) are tuned to the released ViT-H; this
    # small model's IoU head predicts lower (median 0.39 over one scene's grid), and with those
    # defaults the official SamAutomaticMaskGenerator keeps 1 mask on these 4 scenes. Relaxed filters:
    gen = TritonSamAutomaticMaskGenerator(SamClient(small_server.grpc_url, timeout=600), points_per_side=16,
                                          pred_iou_thresh=0.5, stability_score_thresh=0.85)
    found, total = 0, 0
    for scene in eval_scenes(4):
        records = gen.generate(scene.image)
        for gt in scene.masks:
            total += 1
            found += any(mask_iou(r["segmentation"], gt) >= AMG_MATCH_IOU for r in records)
    assert total >= 8 and found / total >= AMG_RECOVERED, f"AMG recovered {found} of {total} objects"
