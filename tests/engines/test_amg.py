"""InProcessMaskGenerator (the Ray job's engine) against segment_anything.SamAutomaticMaskGenerator."""

import pytest

from samrt.amg import AmgOptions
from samrt.engines import InProcessMaskGenerator, OnnxRuntimeRunner

from ..client.test_amg import PARAMS, _match
from ..conftest import random_image


@pytest.mark.slow  # the official generator on a 1024 px tiny model: 11 min for both cases on the loaded 2-core machine
@pytest.mark.parametrize("extra", [dict(), dict(crop_n_layers=1)])
def test_equals_sam_automatic_mask_generator(tiny_export, tiny_sam, extra):
    from segment_anything import SamAutomaticMaskGenerator

    image = random_image(240, 320, seed=77)
    ref = SamAutomaticMaskGenerator(tiny_sam, output_mode="binary_mask", **PARAMS, **extra).generate(image)
    gen = InProcessMaskGenerator(OnnxRuntimeRunner(tiny_export.encoder_path), OnnxRuntimeRunner(tiny_export.decoder_path))
    ours = gen.generate(image, AmgOptions(**PARAMS, **extra), output_mode="binary_mask")
    _match(ref, ours)


def test_rejects_a_bad_image(tiny_export):
    from samrt.errors import InputError

    gen = InProcessMaskGenerator(OnnxRuntimeRunner(tiny_export.encoder_path), OnnxRuntimeRunner(tiny_export.decoder_path))
    with pytest.raises(InputError, match=r"image: got shape \(4, 4\), expected HxWx3"):
        gen.generate(random_image(4, 4)[..., 0], AmgOptions(**PARAMS))
