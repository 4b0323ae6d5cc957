"""SAM's mask decoder, exact and lighter: what depends only on the image is computed once per image,
the rest is re-associated so that the image side does less work, and prompts of any length below a
fixed token count run in one compiled shape.

Same answers as `PromptDecoder` (the classic graph, itself checked against `segment_anything`) up to
float rounding; the math, part by part, is in docs/fast-decoder.md. Two graphs, exported beside the
classic ones and checked against PyTorch (`samrt.export.onnx_export`):

`ImagePrecompute` (once per image, when it is encoded; kept with the embedding in the cache)
    image_embeddings float32 [1,C,E,E] ->
    t2i_keys_t       float32 [Ci,HW]  layer 1, token->image attention: k_proj(src + PE), transposed
    t2i_values       float32 [HW,Ci]  layer 1, token->image attention: v_proj(src)
    i2t_queries_t    float32 [Ci,HW]  layer 1, image->token attention: q_proj(src + PE), transposed
  where src = embedding + no_mask_embed (the dense prompt when no mask is given), HW = E*E and
  Ci = C / 2. The embedding itself is kept as `image_tokens` [HW,C] (its exact transpose, made by
  the caller: no rounding by a bf16 engine).

`FastMaskDecoder` (per prompt; `with_mask` selects the variant with a mask prompt)
    image_tokens and the three image tensors above (one image), point_coords float32 [P,T,2] (resized frame),
    point_labels float32 [P,T] (1, 0, 2, 3, -1 as SAM's; ABSENT_LABEL marks a slot that is not a
    token at all), [mask_input float32 [P,1,m,m]] ->
    low_res_masks float32 [P,4,m,m], iou_predictions float32 [P,4]  (as the classic graph)

Why each step is exact:
- Absent slots are masked out of every attention that reads tokens as keys (an additive -1e9 on
  their columns before the softmax); their own rows are computed and never read (token->image
  attention and the MLP are per row; the final attention reads the IoU and mask tokens only). So a
  prompt padded to T slots answers exactly as the same prompt unpadded. SAM's own padding point
  (label -1) stays a real token.
- With a mask prompt, `src` changes by `dense - no_mask_embed`, where `dense` ends in a 1x1
  convolution W_c h + b_c of the downscaled mask h [HW,16]. The cached projections are linear in
  `src`, so they change by (W W_c) h + W (b_c - no_mask_embed): 16 -> Ci products folded at build.
- Attention with few tokens: with Q_h the query rows of head h and X the image tokens,
  Q_h K_h^T = (Q_h W_k,h) X^T + (a per-row constant, which the softmax over the image cancels) and
  A_h V_h = (A_h X) W_v,h^T + b_v,h (rows of A sum to 1); image->token attention likewise takes its
  scores as X (W_q,h^T K_h^T) + b_q,h K_h^T and its output as A (V W_o^T). Every image-side product
  is then [HW x C] by [C x 8T] instead of [HW x C] by [C x Ci].
- Heads as block-diagonal matrices: head h's rows keep only head h's columns, so per-head products
  are ordinary batched matrix products (no head transposes of image-sized tensors).
- The output upscaling's transposed convolutions (kernel 2, stride 2: no overlap) are per-pixel
  matrix products followed by a pixel shuffle; LayerNorm2d is a LayerNorm over channels.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from samrt.prompts import ABSENT_LABEL  # a prompt slot that is no token (masked out of attention)

__all__ = ["ABSENT_LABEL", "ImagePrecompute", "FastMaskDecoder"]

_MASKED = -1e9  # additive score of an absent slot: exp underflows to exactly 0


def _dense_pe_tokens(prompt_encoder) -> torch.Tensor:
    """The prompt encoder's dense positional encoding as tokens [HW,C] (a model constant)."""
    with torch.no_grad():
        return prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)[0].clone()


class ImagePrecompute(nn.Module):
    """image_embeddings [1,C,E,E] -> (t2i_keys_t [Ci,HW], t2i_values [HW,Ci], i2t_queries_t [Ci,HW]):
    layer 1's image-only projections (see the module docstring)."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        layer1 = sam.mask_decoder.transformer.layers[0]
        self.t2i = layer1.cross_attn_token_to_image
        self.i2t = layer1.cross_attn_image_to_token
        self.no_mask_embed = sam.prompt_encoder.no_mask_embed
        self.register_buffer("pos", _dense_pe_tokens(sam.prompt_encoder), persistent=False)

    def forward(self, image_embeddings: torch.Tensor):
        tokens = image_embeddings[0].flatten(1).transpose(0, 1)
        src = tokens + self.no_mask_embed.weight
        pos = src + self.pos
        return (self.t2i.k_proj(pos).transpose(0, 1), self.t2i.v_proj(src), self.i2t.q_proj(pos).transpose(0, 1))


def _head_mask(heads: int, dim: int) -> torch.Tensor:
    """[heads, dim]: 1 where column c belongs to head h."""
    return (torch.arange(dim)[None, :] // (dim // heads) == torch.arange(heads)[:, None]).float()


class FastMaskDecoder(nn.Module):
    """Prompt encoder + mask decoder over P prompts on one image, from `ImagePrecompute`'s tensors.

    See the module docstring for tensors and exactness. Build it after the weights are loaded (it
    folds weights into buffers)."""

    def __init__(self, sam: nn.Module, with_mask: bool = False) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        tr = sam.mask_decoder.transformer
        self.img_size = sam.image_encoder.img_size
        self.with_mask = with_mask
        cross, self_attn = tr.layers[0].cross_attn_token_to_image, tr.layers[0].self_attn
        self.heads = cross.num_heads
        self.register_buffer("cross_heads", _head_mask(cross.num_heads, cross.internal_dim), persistent=False)
        self.register_buffer("self_heads", _head_mask(self_attn.num_heads, self_attn.internal_dim), persistent=False)
        self.register_buffer("pos", _dense_pe_tokens(sam.prompt_encoder), persistent=False)
        up = sam.mask_decoder.output_upscaling
        with torch.no_grad():
            # ConvTranspose2d(k=2, s=2) weight [Cin, Cout, 2, 2] -> [Cin, (di, dj, Cout)]
            for name, conv in (("up1", up[0]), ("up2", up[3])):
                w = conv.weight.permute(0, 2, 3, 1).reshape(conv.weight.shape[0], -1)
                self.register_buffer(name + "_w", w.clone(), persistent=False)
                self.register_buffer(name + "_b", conv.bias.repeat(4).clone(), persistent=False)
            if with_mask:
                last = sam.prompt_encoder.mask_downscaling[-1]  # Conv2d(16 -> C, kernel 1)
                wc = last.weight[:, :, 0, 0]  # [C,16]
                bc = last.bias - sam.prompt_encoder.no_mask_embed.weight[0]
                l1 = tr.layers[0]
                self.register_buffer("src_w", wc.T.clone(), persistent=False)  # [16,C]
                self.register_buffer("src_b", bc.clone(), persistent=False)
                for name, lin in (("k", l1.cross_attn_token_to_image.k_proj), ("v", l1.cross_attn_token_to_image.v_proj),
                                  ("q", l1.cross_attn_image_to_token.q_proj)):
                    self.register_buffer(name + "_w", (lin.weight @ wc).T.clone(), persistent=False)  # [16,Ci]
                    self.register_buffer(name + "_b", (lin.weight @ bc).clone(), persistent=False)  # [Ci]

    # -- prompts ---------------------------------------------------------------------------------
    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[P,T,2] resized-frame coords, [P,T] labels -> [P,T,C] (PromptEncoder._embed_points)."""
        pe = self.prompt_encoder
        emb = pe.pe_layer._pe_encoding((coords + 0.5) / self.img_size)
        lab = labels.unsqueeze(-1)
        emb = emb * (lab != -1) + pe.not_a_point_embed.weight * (lab == -1)
        for i, point_embedding in enumerate(pe.point_embeddings):
            emb = emb + point_embedding.weight * (lab == i)
        return emb

    # -- heads as block-diagonal matrices --------------------------------------------------------
    def _blocks(self, x: torch.Tensor, head_mask: torch.Tensor) -> torch.Tensor:
        """[P,T,D] -> [P,hT,D]: row (h, t) keeps head h's columns of row t."""
        return (x.unsqueeze(1) * head_mask[None, :, None, :]).reshape(x.shape[0], -1, x.shape[-1])

    def _unblocks(self, y: torch.Tensor, head_mask: torch.Tensor, tokens: int) -> torch.Tensor:
        """[P,hT,D] -> [P,T,D]: head h's columns taken from rows (h, t)."""
        return (y.reshape(y.shape[0], -1, tokens, y.shape[-1]) * head_mask[None, :, None, :]).sum(1)

    # -- attention -------------------------------------------------------------------------------
    def _token_attention(self, attn, q, k, v, key_bias):
        """Self-attention of the tokens, absent slots masked as keys."""
        d = attn.internal_dim // attn.num_heads
        scores = self._blocks(attn.q_proj(q), self.self_heads) @ attn.k_proj(k).transpose(1, 2) / math.sqrt(d)
        a = torch.softmax(scores + key_bias[:, None, :], -1)
        return attn.out_proj(self._unblocks(a @ attn.v_proj(v), self.self_heads, q.shape[1]))

    def _tokens_to_cached_image(self, attn, q, keys_t, values):
        """Token->image attention on layer 1's cached keys [Ci,HW] and values [HW,Ci]."""
        d = attn.internal_dim // attn.num_heads
        a = torch.softmax(self._blocks(attn.q_proj(q), self.cross_heads) @ keys_t / math.sqrt(d), -1)  # [P,hT,HW]
        return attn.out_proj(self._unblocks(a @ values, self.cross_heads, q.shape[1]))

    def _tokens_to_image(self, attn, q, keys):
        """Token->image attention on image tokens `keys` [P,HW,C], re-associated (module docstring)."""
        d = attn.internal_dim // attn.num_heads
        qk = self._blocks(attn.q_proj(q), self.cross_heads) @ attn.k_proj.weight  # [P,hT,C]
        a = torch.softmax((keys + self.pos) @ (qk.transpose(1, 2) / math.sqrt(d)), 1)  # [P,HW,hT]
        ax = a.transpose(1, 2) @ keys  # [P,hT,C]
        out = self._unblocks(ax @ attn.v_proj.weight.T, self.cross_heads, q.shape[1]) + attn.v_proj.bias
        return attn.out_proj(out)

    def _image_to_tokens(self, attn, scores_t, queries, key_bias):
        """Image->token attention from scores [P,hT,HW] (unscaled): softmax over each head's
        tokens, output A (V W_o^T) + b_o -> [P,HW,C]."""
        p, t = queries.shape[:2]
        d = attn.internal_dim // attn.num_heads
        s = (scores_t / math.sqrt(d)).reshape(p, self.heads, t, -1) + key_bias[:, None, :, None]
        a = torch.softmax(s, 2).reshape(p, self.heads * t, -1)
        vw = self._blocks(attn.v_proj(queries), self.cross_heads) @ attn.out_proj.weight.T  # [P,hT,C]
        return a.transpose(1, 2) @ vw + attn.out_proj.bias

    # -- the decoder -----------------------------------------------------------------------------
    def forward(self, image_tokens, t2i_keys_t, t2i_values, i2t_queries_t, point_coords, point_labels,
                mask_input: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        md, tr = self.mask_decoder, self.mask_decoder.transformer
        p = point_coords.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0)
        n_out = out_tokens.shape[0]
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(p, -1, -1),
                            self.embed_points(point_coords, point_labels)], 1)  # [P,T,C]
        present = (point_labels >= -1).to(point_labels.dtype)
        key_bias = torch.cat([torch.zeros_like(point_labels[:, :1]).expand(p, n_out), (1 - present) * _MASKED], 1)

        src = image_tokens + self.prompt_encoder.no_mask_embed.weight  # [HW,C]
        keys_t, values, queries_t = t2i_keys_t, t2i_values, i2t_queries_t
        if self.with_mask:
            h = self.prompt_encoder.mask_downscaling[:-1](mask_input).flatten(2).transpose(1, 2)  # [P,HW,16]
            src = src + h @ self.src_w + self.src_b
            keys_t = keys_t + (h @ self.k_w + self.k_b).transpose(1, 2)
            values = values + h @ self.v_w + self.v_b
            queries_t = queries_t + (h @ self.q_w + self.q_b).transpose(1, 2)

        l1, l2 = tr.layers
        q = l1.norm1(self._token_attention(l1.self_attn, tokens, tokens, tokens, key_bias))  # no residual (SAM)
        q = l1.norm2(q + self._tokens_to_cached_image(l1.cross_attn_token_to_image, q + tokens, keys_t, values))
        q = l1.norm3(q + l1.mlp(q))
        a = l1.cross_attn_image_to_token
        kb = self._blocks(a.k_proj(q + tokens), self.cross_heads)  # [P,hT,Ci]
        keys = l1.norm4(src + self._image_to_tokens(a, kb @ queries_t, q, key_bias))  # [P,HW,C]

        qpe = q + tokens
        q = l2.norm1(q + self._token_attention(l2.self_attn, qpe, qpe, q, key_bias))
        q = l2.norm2(q + self._tokens_to_image(l2.cross_attn_token_to_image, q + tokens, keys))
        q = l2.norm3(q + l2.mlp(q))
        a = l2.cross_attn_image_to_token
        kb = self._blocks(a.k_proj(q + tokens), self.cross_heads)  # [P,hT,Ci]
        scores_t = (kb @ a.q_proj.weight) @ (keys + self.pos).transpose(1, 2) + (kb @ a.q_proj.bias).unsqueeze(-1)
        keys = l2.norm4(keys + self._image_to_tokens(a, scores_t, q, key_bias))

        qo = q[:, :n_out]  # the final attention: only the IoU and mask tokens are read
        qo = tr.norm_final_attn(qo + self._tokens_to_image(tr.final_attn_token_to_image, qo + tokens[:, :n_out], keys))
        return self._masks(keys, qo[:, 1:]), md.iou_prediction_head(qo[:, 0])

    def _masks(self, keys: torch.Tensor, mask_tokens: torch.Tensor) -> torch.Tensor:
        """output_upscaling channels-last ([P,HW,C] -> per-pixel products, pixel order (i, j, di, dj,
        di2, dj2)), the hypernetworks' product, then the pixel shuffle -> [P,4,4E,4E]."""
        md = self.mask_decoder
        up = md.output_upscaling
        p, hw, _ = keys.shape
        e = int(round(math.sqrt(hw)))
        c1, c2 = up[0].weight.shape[1], up[3].weight.shape[1]
        y = (keys @ self.up1_w + self.up1_b).reshape(p, -1, c1)
        y = up[2](F.layer_norm(y, (c1,), up[1].weight, up[1].bias, up[1].eps))
        y = up[4]((y @ self.up2_w + self.up2_b).reshape(p, -1, c2))  # [P, 16 HW, C2]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], 1)
        m = y @ hyper.transpose(1, 2)  # [P, 16 HW, 4]
        m = m.reshape(p, e, e, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return m.reshape(p, -1, 4 * e, 4 * e)
