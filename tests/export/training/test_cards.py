"""The shipped model card is what write_model_card makes of the shipped run records."""

import os

from samrt.export.training import write_model_card

ASSETS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "samrt", "assets")


def test_the_embedded_models_card_is_regenerated_byte_for_byte(tmp_path):
    stem = os.path.join(ASSETS, "sam_samrt_small")
    committed = open(stem + ".MODEL_CARD.md", "rb").read()
    status = committed.decode().split("\n## Status\n", 1)[1]  # the closing section is the writer's own words
    out = write_model_card(stem + ".pth", stem + ".train.json", stem + ".eval.json", str(tmp_path / "CARD.md"),
                           "AMD EPYC × 2 cores (no GPU)", status=status)  # the machine of stages 1-2
    assert open(out, "rb").read() == committed
