"""The one declared I/O spec of samrt's graphs, derived from a model configuration.

Export, engine profiles, Triton configs and the client all derive their tensor names,
dtypes and shapes from here. Importable without torch or onnx.

Official contract (vit_b/vit_l/vit_h, image_size 1024):

    encoder  image            float32 [B,3,1024,1024]  -> image_embeddings float32 [B,256,64,64]
    decoder  image_embeddings float32 [P,256,64,64]
             point_coords     float32 [P,N,2]      (x, y in the resized 1024 frame)
             point_labels     float32 [P,N]        (1 fg, 0 bg, 2 box top-left, 3 box bottom-right, -1 pad)
             mask_input       float32 [P,1,256,256]
             has_mask_input   float32 [P]
          -> low_res_masks    float32 [P,4,256,256] (token 0 single-mask, 1..3 multimask)
             iou_predictions  float32 [P,4]

The fast decoder (the same answers as `decoder` up to float rounding; `samrt.export.fast_decoder`)
is two graphs, plus a variant of the second with a mask prompt (HW = 64*64, Ci = 128):

    image_prep        image_embeddings float32 [1,256,64,64]
                   -> t2i_keys_t [Ci,HW], t2i_values [HW,Ci], i2t_queries_t [Ci,HW]
    fast_decoder      image_tokens [HW,256] (the embedding transposed, exact) and the three tensors
                      above (one image), point_coords float32 [P,T,2],
                      point_labels float32 [P,T] (as the decoder's, and -2: an absent slot)
                   -> low_res_masks float32 [P,4,256,256], iou_predictions float32 [P,4]
    fast_decoder_mask the same plus mask_input float32 [P,1,256,256]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple, Union

__all__ = [
    "SamConfig",
    "TensorSpec",
    "GraphSpec",
    "MODEL_CONFIGS",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "encoder_spec",
    "image_prep_spec",
    "fast_decoder_spec",
    "decoder_spec",
    "get_config",
    "resolve_model_type",
    "MODEL_ALIASES",
    "MODEL_TYPE_CHOICES",
]

# SAM's normalisation constants (RGB, 0..255 scale), as in segment_anything.build_sam.
PIXEL_MEAN: Tuple[float, float, float] = (123.675, 116.28, 103.53)
PIXEL_STD: Tuple[float, float, float] = (58.395, 57.12, 57.375)

Dim = Union[int, str]  # a fixed size or the name of a symbolic axis


@dataclass(frozen=True)
class SamConfig:
    """Hyperparameters of one SAM model (the official builder's arguments, as data)."""

    model_type: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: Tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def embedding_size(self) -> int:
        """Side of the square image embedding (64 for the official models)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (256 for the official models)."""
        return 4 * self.embedding_size

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamConfig":
        d = dict(d)
        d["encoder_global_attn_indexes"] = tuple(d["encoder_global_attn_indexes"])
        return cls(**d)


MODEL_CONFIGS: Dict[str, SamConfig] = {
    "vit_h": SamConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    # Test configuration: tiny ViT encoder, the real prompt encoder and mask decoder, the
    # official 1024 input. Built through the same code path as the official models.
    "tiny": SamConfig("tiny", 192, 4, 3, (1, 3)),
}


# Other names of a model type, as segment_anything's `sam_model_registry` has them ("default": vit_h).
MODEL_ALIASES: Dict[str, str] = {"default": "vit_h"}
# What `--model-type` accepts: "auto" (read the checkpoint's shapes), the aliases, the types.
MODEL_TYPE_CHOICES: Tuple[str, ...] = ("auto", *MODEL_ALIASES, *MODEL_CONFIGS)


def resolve_model_type(model_type: Optional[str]) -> Optional[str]:
    """The model type an alias names ("default" -> "vit_h"); a type, "auto" and None as given.
    The one place aliases are resolved. KeyError for a name that is none of these."""
    if model_type in (None, "auto") or model_type in MODEL_CONFIGS:
        return model_type
    if model_type in MODEL_ALIASES:
        return MODEL_ALIASES[model_type]
    raise KeyError(f"unknown model type {model_type!r}; expected one of {list(MODEL_TYPE_CHOICES)}")


def get_config(model_type: str) -> SamConfig:
    """The configuration of `model_type` (a type or an alias). KeyError for an unknown name or "auto"."""
    resolved = resolve_model_type(model_type)
    if resolved not in MODEL_CONFIGS:
        raise KeyError(f"unknown model type {model_type!r}; expected one of "
                       f"{sorted(MODEL_CONFIGS) + sorted(MODEL_ALIASES)}")
    return MODEL_CONFIGS[resolved]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: numpy dtype name and shape (ints fixed, strings symbolic)."""

    name: str
    dtype: str
    shape: Tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> Dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, **axes: int) -> Tuple[int, ...]:
        """The shape with each symbolic axis replaced by the size given for it."""
        try:
            return tuple(d if isinstance(d, int) else axes[d] for d in self.shape)
        except KeyError as e:
            raise KeyError(f"{self.name}: no size given for symbolic axis {e}") from None


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one graph, in order."""

    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...] = field(default=())

    @property
    def input_names(self) -> List[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> List[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}; it has {self.input_names + self.output_names}")


def encoder_spec(cfg: SamConfig) -> GraphSpec:
    s, e, c = cfg.image_size, cfg.embedding_size, cfg.prompt_embed_dim
    return GraphSpec(
        name="encoder",
        inputs=(TensorSpec("image", "float32", ("batch", 3, s, s)),),
        outputs=(TensorSpec("image_embeddings", "float32", ("batch", c, e, e)),),
    )


def decoder_spec(cfg: SamConfig) -> GraphSpec:
    e, c, m, t = cfg.embedding_size, cfg.prompt_embed_dim, cfg.low_res_size, cfg.num_mask_tokens
    return GraphSpec(
        name="decoder",
        inputs=(
            TensorSpec("image_embeddings", "float32", ("num_prompts", c, e, e)),
            TensorSpec("point_coords", "float32", ("num_prompts", "num_points", 2)),
            TensorSpec("point_labels", "float32", ("num_prompts", "num_points")),
            TensorSpec("mask_input", "float32", ("num_prompts", 1, m, m)),
            TensorSpec("has_mask_input", "float32", ("num_prompts",)),
        ),
        outputs=(
            TensorSpec("low_res_masks", "float32", ("num_prompts", t, m, m)),
            TensorSpec("iou_predictions", "float32", ("num_prompts", t)),
        ),
    )


def _image_state_tensors(cfg: SamConfig, tokens: bool = True) -> Tuple[TensorSpec, ...]:
    hw, c, ci = cfg.embedding_size ** 2, cfg.prompt_embed_dim, cfg.prompt_embed_dim // 2
    return ((TensorSpec("image_tokens", "float32", (hw, c)),) if tokens else ()) + (
            TensorSpec("t2i_keys_t", "float32", (ci, hw)),
            TensorSpec("t2i_values", "float32", (hw, ci)),
            TensorSpec("i2t_queries_t", "float32", (ci, hw)))


def image_prep_spec(cfg: SamConfig) -> GraphSpec:
    """The fast decoder's per-image graph: one embedding -> the tensors kept with it in the cache
    (beside the embedding itself, kept transposed as `image_tokens`)."""
    e, c = cfg.embedding_size, cfg.prompt_embed_dim
    return GraphSpec(name="image_prep", inputs=(TensorSpec("image_embeddings", "float32", (1, c, e, e)),),
                     outputs=_image_state_tensors(cfg, tokens=False))


def fast_decoder_spec(cfg: SamConfig, with_mask: bool = False) -> GraphSpec:
    """The fast decoder's per-prompt graph (one image, P prompts of T slots each)."""
    m, t = cfg.low_res_size, cfg.num_mask_tokens
    inputs = _image_state_tensors(cfg) + (
        TensorSpec("point_coords", "float32", ("num_prompts", "num_tokens", 2)),
        TensorSpec("point_labels", "float32", ("num_prompts", "num_tokens")),
    )
    if with_mask:
        inputs += (TensorSpec("mask_input", "float32", ("num_prompts", 1, m, m)),)
    return GraphSpec(
        name="fast_decoder_mask" if with_mask else "fast_decoder",
        inputs=inputs,
        outputs=(TensorSpec("low_res_masks", "float32", ("num_prompts", t, m, m)),
                 TensorSpec("iou_predictions", "float32", ("num_prompts", t))),
    )
