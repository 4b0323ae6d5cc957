"""The two halves of SAM as samrt runs them, wrapped around the official modules (the model
itself is never edited).

`PromptDecoder` differs from the official `SamOnnxModel` on purpose (see README, "Decoder
contract"): one image-embedding row per prompt (rows may come from different images),
no `orig_im_size` in the graph, and the logits and scores of all mask tokens as outputs.
Mask selection and upscaling happen after the graph, in `samrt.processing`. Branches are
replaced by arithmetic, so the graph has no data-dependent control flow.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

__all__ = ["ImageEncoder", "PromptDecoder"]


class ImageEncoder(nn.Module):
    """SAM's image encoder: image float32 [B,3,S,S] (normalised, zero-padded bottom-right) ->
    image_embeddings float32 [B,256,S/16,S/16].

    The module exported as `*.encoder.onnx` and the PyTorch reference its check compares with."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class PromptDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder over P prompts, each with its own image-embedding row;
    all 4 mask tokens out (token 0: the single-mask answer, 1-3: the multimask candidates).

    Tensors as `samrt.spec.decoder_spec` declares them: image_embeddings float32 [P,256,E,E];
    point_coords float32 [P,N,2] (x, y in the resized input's pixels); point_labels float32 [P,N]
    (1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding); mask_input
    float32 [P,1,4E,4E] (previous low-res logits); has_mask_input float32 [P] (1 or 0) ->
    low_res_masks float32 [P,4,4E,4E] (logits), iou_predictions float32 [P,4].

    One module, three uses: the graph exported as `*.decoder.onnx` (`samrt.export.onnx_export`),
    the forward pass that training back-propagates through (`samrt.export.training`), and the
    PyTorch baseline the engine benchmarks time (`samrt.benchmarks.engines`). Build it after the
    weights are loaded: it caches the dense positional encoding from the prompt encoder."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = sam.image_encoder.img_size
        with torch.no_grad():
            image_pe = sam.prompt_encoder.get_dense_pe().detach().clone()
        self.register_buffer("image_pe", image_pe, persistent=False)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[P,N,2] coords in the resized frame, [P,N] labels -> [P,N,C] sparse embeddings."""
        pe = self.prompt_encoder.pe_layer._pe_encoding((coords + 0.5) / self.img_size)
        labels = labels.unsqueeze(-1)
        emb = pe * (labels != -1)
        emb = emb + self.prompt_encoder.not_a_point_embed.weight * (labels == -1)
        for i, point_embedding in enumerate(self.prompt_encoder.point_embeddings):
            emb = emb + point_embedding.weight * (labels == i)
        return emb

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """[P,1,4E,4E] logits and [P] flags -> [P,C,E,E] dense embeddings."""
        has = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has * self.prompt_encoder.mask_downscaling(mask_input)
        return dense + (1 - has) * self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        md = self.mask_decoder
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_masks(mask_input, has_mask_input)

        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        pos_src = self.image_pe.expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = md.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + md.num_mask_tokens, :]

        upscaled = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        low_res_masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou_predictions = md.iou_prediction_head(iou_token_out)
        return low_res_masks, iou_predictions
