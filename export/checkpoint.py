"""Official SAM checkpoints: load, detect the model type from tensor shapes, build the model.

The model definition is the official `segment_anything` package; samrt never edits it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import zipfile
from functools import partial
from typing import Dict, Mapping, Optional, Tuple

import torch

from samrt.errors import CheckpointError, ModelTypeMismatchError
from samrt.spec import MODEL_CONFIGS, SamConfig, get_config

__all__ = [
    "build_sam",
    "config_from_state_dict",
    "load_state_dict",
    "load_sam",
    "random_sam",
    "resize_image_input",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

_REQUIRED = (
    "image_encoder.patch_embed.proj.weight",
    "image_encoder.pos_embed",
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "mask_decoder.iou_token.weight",
)


def build_sam(cfg: SamConfig) -> torch.nn.Module:
    """An untrained `segment_anything.modeling.Sam` for `cfg` (mirrors build_sam._build_sam)."""
    from segment_anything.modeling import (  # segment-anything: imported when a model is built
        ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer)

    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(cfg.encoder_global_attn_indexes),
            window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(cfg.embedding_size, cfg.embedding_size),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    )
    return sam.eval()


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file safely (`weights_only=True`); errors name what was found."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: no such file")
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        raise CheckpointError(
            f"checkpoint {path!r} ({size} bytes) cannot be read: not a complete zip archive as torch.save "
            f"writes (first bytes {head!r}). Expected a SAM state-dict file; is the download truncated?"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path!r} ({size} bytes) cannot be read: {type(e).__name__}: {e}. "
            "Expected a complete torch.save file of a SAM state dict (is the download truncated?)"
        ) from e
    except Exception as e:  # pickle.UnpicklingError and friends from weights_only
        raise CheckpointError(
            f"checkpoint {path!r} ({size} bytes) is not a plain state dict of tensors: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):  # training checkpoints that wrap the state dict
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and _REQUIRED[0] in inner:
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path!r}: got a {type(obj).__name__}, expected a dict of tensors")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        keys = list(obj)[:5]
        raise CheckpointError(
            f"checkpoint {path!r} is not a SAM checkpoint: it has {len(obj)} entries "
            f"(first: {keys}) and lacks {missing}"
        )
    return dict(obj)


def _count(prefix: str, sd: Mapping[str, torch.Tensor]) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(idx) + 1 if idx else 0


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> SamConfig:
    """Derive the SamConfig from tensor shapes; named after the official type it equals, if any."""
    try:
        embed_dim, _, patch, _ = sd["image_encoder.patch_embed.proj.weight"].shape
        grid = sd["image_encoder.pos_embed"].shape[1]
        depth = _count("image_encoder.blocks.", sd)
        rel = [sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
        head_dim = rel[0][1]
        global_idx = tuple(i for i, s in enumerate(rel) if s[0] == 2 * grid - 1)
        local = [s[0] for s in rel if s[0] != 2 * grid - 1]
        window = (local[0] + 1) // 2 if local else 14
        prompt_dim = sd["mask_decoder.iou_token.weight"].shape[1]
        cfg = SamConfig(
            model_type="custom",
            encoder_embed_dim=int(embed_dim),
            encoder_depth=depth,
            encoder_num_heads=int(embed_dim) // int(head_dim),
            encoder_global_attn_indexes=global_idx,
            image_size=int(grid) * int(patch),
            patch_size=int(patch),
            window_size=int(window),
            prompt_embed_dim=int(prompt_dim),
            mask_in_chans=int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            decoder_depth=_count("mask_decoder.transformer.layers.", sd),
            decoder_mlp_dim=int(sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            num_multimask_outputs=int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            iou_head_depth=_count("mask_decoder.iou_prediction_head.layers.", sd),
            iou_head_hidden_dim=int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        )
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"state dict does not have the shapes of a SAM model: missing or odd {e}") from e
    for official in MODEL_CONFIGS.values():
        if dataclasses.replace(official, model_type="custom") == cfg:
            return official
    return cfg


def _describe(cfg: SamConfig) -> str:
    return (f"{cfg.model_type} (embed_dim {cfg.encoder_embed_dim}, depth {cfg.encoder_depth}, "
            f"heads {cfg.encoder_num_heads}, image_size {cfg.image_size})")


def load_sam(
    checkpoint: str, model_type: Optional[str] = None
) -> Tuple[torch.nn.Module, SamConfig]:
    """Load an official (or official-format) checkpoint into the official model class."""
    sd = load_state_dict(checkpoint)
    cfg = config_from_state_dict(sd)
    if model_type not in (None, "auto"):
        expected = get_config(model_type)  # an alias ("default") resolves there
        if cfg != expected:
            raise ModelTypeMismatchError(
                f"checkpoint {checkpoint!r} holds {_describe(cfg)}, but --model-type asked for {_describe(expected)}"
            )
    sam = build_sam(cfg)
    result = sam.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {checkpoint!r} does not fit {_describe(cfg)}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return sam.eval(), cfg


RANDOM_INIT_WARNING = (
    "RANDOM-INIT WEIGHTS: this model was not trained. Its masks are noise and mean nothing; "
    "use it only to try the pipeline."
)


def random_sam(cfg: SamConfig, seed: int = 0) -> torch.nn.Module:
    """A seeded random-init model; the zero-initialised position tables are filled with noise
    so that every path of the graph is exercised (an all-zero table hides export bugs)."""
    log.warning(RANDOM_INIT_WARNING)
    torch.manual_seed(seed)
    sam = build_sam(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return sam.eval()


def resize_image_input(sd: Mapping[str, torch.Tensor], image_size: int) -> Dict[str, torch.Tensor]:
    """The state dict re-targeted at another input size (a starting point for fine-tuning there).

    Only the image encoder's position tables depend on the input size: the absolute position
    embedding (one vector per patch) is resampled bicubically to the new patch grid, and the
    relative-position tables of the global-attention blocks (2*grid-1 rows) linearly, as
    segment_anything's `get_rel_pos` itself resamples a table of the wrong length. Windowed
    blocks, the neck, the prompt encoder (its Fourier features take normalised coordinates) and
    the mask decoder do not depend on the input size.
    """
    import torch.nn.functional as F  # torch: the export extra

    cfg = config_from_state_dict(sd)
    if image_size % cfg.patch_size:
        raise CheckpointError(f"image size {image_size}: expected a multiple of the patch size {cfg.patch_size}")
    if image_size == cfg.image_size:
        return dict(sd)
    new = image_size // cfg.patch_size
    out = dict(sd)
    pos = sd["image_encoder.pos_embed"]  # 1 x grid x grid x C
    out["image_encoder.pos_embed"] = F.interpolate(
        pos.permute(0, 3, 1, 2).float(), size=(new, new), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1).to(pos.dtype).contiguous()
    for i in cfg.encoder_global_attn_indexes:
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
            table = sd[key]  # (2*grid-1) x head_dim
            out[key] = F.interpolate(table.T[None].float(), size=2 * new - 1, mode="linear",
                                     align_corners=False)[0].T.to(table.dtype).contiguous()
    return out


def save_checkpoint(sam: torch.nn.Module, path: str) -> None:
    """Write `sam` in the official format: a plain state dict, as the released .pth files."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(sam.state_dict(), path)
