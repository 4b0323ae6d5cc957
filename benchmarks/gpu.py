"""The GPU path measured in one process, with PyTorch: `python benchmarks/gpu.py --out DIR`.

For each model type (seeded random weights, `samrt.export.random_sam`), in one run:
- "encoder" rows: the image encoder on one 1024 x 1024 image, step by step: eager fp32 (TF32 off,
  the reference), TF32 matmuls, bf16 weights and activations, bf16 with scaled-dot-product
  attention (`sdpa_attention`: the relative-position terms as the attention's additive mask), and
  that under `torch.compile`. Each step's embedding is checked against the reference as the engine
  gate does it (`samrt.engines.build.DEFAULT_MIN_MEAN_IOU`): the mean mask IoU of the three
  candidates of `CLICKS` clicks decoded by the fp32 decoder from either embedding. Time: CUDA
  events (median of `--iters` after warm-up); the floor: the step's FLOPs (counted by
  `torch.utils.flop_counter`) at the bf16 (or fp32) matrix rate measured in the same run.
- "decoder" rows: P = `--prompts` one-click prompts on one cached embedding, SAM's decoder
  (`segment_anything`, the embedding repeated per prompt) and samrt's exact fast decoder
  (`samrt.export.fast_decoder`, the image-only part done once per image), fp32 and bf16; their
  masks against the fp32 classic decoder's.
- "click" rows: click to masks in one process: the cached embedding (and the fast decoder's
  image tensors) on the GPU -> one click -> three masks at the original size (1500 x 2250, SAM's
  `postprocess_masks`: bilinear to 1024, crop, bilinear to the image) -> booleans in host memory.
  Wall time (perf_counter, the GPU synchronised by the copy), median of `--iters`.

Rows go to <out>/gpu.json and gpu.csv (`benchmarks.common.write_rows`, with the machine: the
GPU's name and driver from nvidia-smi) after each model, so a run cut short keeps what it
measured. `--device cpu --model-types tiny --quick` runs every path on the CPU (the test does).

Runs without samrt installed (the GPU machine has PyTorch but not this project's environment):
the import root is then mapped from the checkout (pyproject's package-dir: samrt.export is
export/, samrt.benchmarks is benchmarks/).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
import types
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch.utils.flop_counter import FlopCounterMode

try:
    import samrt.export  # noqa: F401 - installed
except ImportError:  # not installed (the GPU machine): every subpackage but the core is a top-level folder here
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import samrt

    samrt.__path__.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samrt.benchmarks.common import latency_stats, write_rows  # noqa: E402 - after the import root is found
from samrt.engines.build import DEFAULT_MIN_MEAN_IOU  # noqa: E402
from samrt.export import random_sam  # noqa: E402
from samrt.export.fast_decoder import FastMaskDecoder, ImagePrecompute  # noqa: E402
from samrt.masks import mask_iou  # noqa: E402
from samrt.spec import get_config  # noqa: E402

CLICKS = 8  # clicks per accuracy check (three candidates each)
ORIGINAL_SIZE = (1500, 2250)  # the click rows' image (H, W): SAM's masks come back at this size
STEPS = ("fp32", "tf32", "bf16", "bf16+sdpa", "bf16+sdpa+compile")


def sdpa_attention(self, x):
    """`segment_anything.modeling.image_encoder.Attention.forward` with
    `torch.nn.functional.scaled_dot_product_attention`: SAM adds the decomposed relative-position
    terms rel_h [B,q_h,q_w,k_h] + rel_w [B,q_h,q_w,k_w] to q k^T * scale before the softmax
    (Li et al., MViTv2, as `add_decomposed_rel_pos`); here they are that additive mask, [B,Q,K]
    in the activations' dtype. Same arithmetic up to rounding; fused kernels on a GPU."""
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, HW, d]
    bias = None
    if self.use_rel_pos:
        d = q.shape[-1]
        rq = q.reshape(b * self.num_heads, h, w, d)
        rel_h = torch.einsum("bhwc,hkc->bhwk", rq, get_rel_pos(h, h, self.rel_pos_h).to(q.dtype))
        rel_w = torch.einsum("bhwc,wkc->bhwk", rq, get_rel_pos(w, w, self.rel_pos_w).to(q.dtype))
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, self.num_heads, h * w, h * w)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return self.proj(o.permute(0, 2, 1, 3).reshape(b, h, w, -1))


def use_sdpa(encoder) -> int:
    """Route every attention block of `encoder` (an ImageEncoderViT) through `sdpa_attention`;
    returns how many blocks were changed."""
    n = 0
    for m in encoder.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(sdpa_attention, m)
            n += 1
    return n


def _sync(device: str) -> None:

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, warmup: int, iters: int) -> List[float]:
    """Milliseconds of `iters` calls after `warmup`: CUDA events on a GPU, perf_counter on a CPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(iters):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    return out


def matmul_tflops(device: str, dtype, n: int, iters: int) -> float:
    """The measured rate of an n x n x n product of random `dtype` matrices, TFLOP/s (the ceiling
    the floors are computed from)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms = float(np.median(time_ms(lambda: a @ b, device, 3, iters)))
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (matrix products and convolutions, 2 per multiply-add), from
    `torch.utils.flop_counter.FlopCounterMode`."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _stats(ms: List[float]) -> Dict[str, float]:
    return latency_stats(ms)


class Model:
    """One model type on one device: the fp32 reference, its fp32 classic decoder and clicks."""
    def __init__(self, model_type: str, device: str, seed: int = 0, image_size: Optional[int] = None) -> None:



        self.cfg = get_config(model_type)
        if image_size:  # a smaller input for a CPU check (the test); SAM's is 1024
            self.cfg = dataclasses.replace(self.cfg, image_size=image_size)
        self.device = device
        self.sam = random_sam(self.cfg, seed).to(device).requires_grad_(False)
        side = self.sam.image_encoder.img_size
        g = torch.Generator().manual_seed(seed + 2)
        self.image = torch.randn(1, 3, side, side, generator=g).to(device)  # a normalised image
        self.clicks = (torch.rand(CLICKS, 1, 2, generator=g) * side).to(device)

    def classic_decode(self, sam, emb, coords, labels, dtype=None):
        """SAM's prompt encoder + mask decoder (segment_anything) on `emb` [1,C,E,E] for P prompts:
        (low_res_masks [P,3,m,m], iou_predictions [P,3]), multimask."""

        with torch.autocast(self.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low, iou = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=True)
        return low.float(), iou.float()

    def masks_iou(self, emb_a, emb_b) -> float:
        """Mean IoU of the masks (logits > 0) of the CLICKS clicks' three candidates, each decoded
        in fp32 from either embedding (as the engine gate compares an engine with fp32)."""


        labels = torch.ones(CLICKS, 1, dtype=torch.int64, device=self.device)
        with torch.no_grad():
            a = self.classic_decode(self.sam, emb_a.float(), self.clicks, labels)[0] > 0
            b = self.classic_decode(self.sam, emb_b.float(), self.clicks, labels)[0] > 0
        a, b = a.cpu().numpy(), b.cpu().numpy()
        return float(np.mean([mask_iou(x, y) for x, y in zip(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))]))


def _row(kind: str, m: Model, **fields) -> dict:
    return {"kind": kind, "model_type": m.cfg.model_type, "device": m.device, **fields}


def encoder_rows(m: Model, steps, args, rates: Dict[str, float]) -> List[dict]:
    """One row per encoder step (see the module docstring)."""



    rows = []
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        ref = m.sam.image_encoder(m.image)
        flops = count_flops(lambda: m.sam.image_encoder(m.image))
        for step in steps:
            tf32 = step == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            bf16 = step.startswith("bf16")
            enc = m.sam.image_encoder
            if bf16:
                enc = copy.deepcopy(enc).to(torch.bfloat16)
            blocks = use_sdpa(enc) if "sdpa" in step else 0
            x = m.image.to(torch.bfloat16) if bf16 else m.image
            fn = (lambda e=enc: e(x))
            t0 = time.perf_counter()
            if "compile" in step:
                compiled = torch.compile(enc)
                fn = (lambda c=compiled: c(x))
            emb = fn()  # the first call (a compile's cost is in it)
            _sync(m.device)
            first_s = time.perf_counter() - t0
            ms = time_ms(fn, m.device, args.warmup, args.iters)
            emb = fn().float()
            rel = float(torch.linalg.vector_norm(emb - ref) / torch.linalg.vector_norm(ref))
            iou = m.masks_iou(emb, ref)
            rate = rates["bf16"] if bf16 else rates["tf32" if tf32 else "fp32"]
            floor_ms = flops / (rate * 1e12) * 1e3
            st = _stats(ms)
            rows.append(_row("encoder", m, step=step, sdpa_blocks=blocks, first_call_s=round(first_s, 2), **st,
                             tflop=flops / 1e12, floor_ms=floor_ms, floor_fraction=floor_ms / st["p50_ms"],
                             rel_l2_vs_fp32=rel, mask_iou_vs_fp32=iou, min_mean_iou=DEFAULT_MIN_MEAN_IOU,
                             passes_gate=iou >= DEFAULT_MIN_MEAN_IOU))
            print(f"encoder {m.cfg.model_type} {step}: p50 {st['p50_ms']:.2f} ms (floor {floor_ms:.2f} ms), "
                  f"mask IoU vs fp32 {iou:.4f}, first call {first_s:.1f} s", flush=True)
            del enc, fn
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


def _autocast(m: Model, dtype):
    """bf16 as mixed precision (`torch.autocast`: products in bf16, norms and softmax in fp32);
    fp32 as it is."""
    return torch.autocast(m.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)


def _fast_decoder(m: Model, dtype):
    """samrt's fast decoder and its image-only tensors for the reference embedding (computed once,
    as the cache keeps them; under `_autocast(dtype)`)."""


    with torch.no_grad(), _autocast(m, dtype):
        emb = m.sam.image_encoder(m.image)
        image = (emb[0].flatten(1).transpose(0, 1).contiguous().to(dtype),) + tuple(
            t.contiguous() for t in ImagePrecompute(m.sam)(emb))
    return FastMaskDecoder(m.sam), image


def _prompts(m: Model, p: int, fast: bool):
    """P one-click prompts: classic (coords [P,1,2], labels [P,1] int) or fast (the click and SAM's
    padding point: coords [P,2,2], labels [P,2] float32)."""
    g = torch.Generator().manual_seed(p)
    side = m.sam.image_encoder.img_size
    xy = torch.rand(p, 1, 2, generator=g) * side
    if not fast:
        return xy.to(m.device), torch.ones(p, 1, dtype=torch.int64, device=m.device)
    coords = torch.cat([xy, torch.zeros(p, 1, 2)], 1)
    labels = torch.tensor([[1.0, -1.0]]).expand(p, 2)
    return coords.to(m.device), labels.to(m.device)


def decoder_rows(m: Model, prompts: List[int], args) -> List[dict]:
    """One row per (decoder, dtype, P): time per call and per prompt, masks against fp32 classic."""


    rows = []
    with torch.no_grad():
        emb = m.sam.image_encoder(m.image)
        fast = {dt: _fast_decoder(m, dt) for dt in (torch.float32, torch.bfloat16)}
        for p in prompts:
            coords, labels = _prompts(m, p, False)
            want = m.classic_decode(m.sam, emb, coords, labels)[0] > 0
            flops = count_flops(lambda: m.classic_decode(m.sam, emb, coords, labels))
            for name, dt in (("classic", torch.float32), ("classic", torch.bfloat16),
                             ("fast", torch.float32), ("fast", torch.bfloat16)):
                if name == "classic":
                    auto = None if dt == torch.float32 else dt
                    fn = (lambda a=auto: m.classic_decode(m.sam, emb, coords, labels, a))
                    got = lambda: fn()[0]  # noqa: E731
                else:
                    dec, image = fast[dt]
                    fc, fl = _prompts(m, p, True)

                    def fn(d=dec, i=image, c=fc, la=fl, dt=dt):
                        with _autocast(m, dt):
                            return d(*i, c, la)
                    got = lambda: fn()[0][:, 1:].float()  # noqa: E731 - the three multimask candidates
                ms = time_ms(fn, m.device, args.warmup, args.iters)
                g = (got() > 0).cpu().numpy()
                w = want.cpu().numpy()
                iou = float(np.mean([mask_iou(a, b) for a, b in zip(g.reshape(-1, *g.shape[-2:]), w.reshape(-1, *w.shape[-2:]))]))
                st = _stats(ms)
                rows.append(_row("decoder", m, decoder=name, dtype=str(dt).replace("torch.", ""), prompts=p, **st,
                                 per_prompt_ms=st["p50_ms"] / p, classic_gflop_per_prompt=flops / p / 1e9,
                                 mask_iou_vs_classic_fp32=iou))
                print(f"decoder {m.cfg.model_type} {name} {rows[-1]['dtype']} P={p}: p50 {st['p50_ms']:.3f} ms, "
                      f"mask IoU {iou:.4f}", flush=True)
            del want
    return rows


def click_rows(m: Model, args) -> List[dict]:
    """Click to masks at the original size in host memory (see the module docstring)."""
    rows = []
    h, w = ORIGINAL_SIZE
    side = m.sam.image_encoder.img_size
    scale = side / max(h, w)
    rh, rw = int(h * scale + 0.5), int(w * scale + 0.5)
    with torch.no_grad():
        for dt in (torch.float32, torch.bfloat16):
            dec, image = _fast_decoder(m, dt)
            coords, labels = _prompts(m, 1, True)

            def click(d=dec, i=image, c=coords, la=labels, dt=dt):
                with _autocast(m, dt):
                    low = d(*i, c, la)[0][:, 1:].float()  # [1,3,m,m]
                up = F.interpolate(low, (side, side), mode="bilinear", align_corners=False)[..., :rh, :rw]
                return (F.interpolate(up, (h, w), mode="bilinear", align_corners=False) > 0).cpu().numpy()

            t = []
            for i in range(args.warmup + args.iters):
                t0 = time.perf_counter()
                masks = click()
                if i >= args.warmup:
                    t.append((time.perf_counter() - t0) * 1e3)
            st = _stats(t)
            rows.append(_row("click", m, decoder="fast", dtype=str(dt).replace("torch.", ""), original_size=[h, w],
                             masks_shape=list(masks.shape), **st))
            print(f"click {m.cfg.model_type} {rows[-1]['dtype']}: p50 {st['p50_ms']:.3f} ms to {h}x{w} masks on the host",
                  flush=True)
    return rows


def run(out: str, model_types: List[str], device: str, prompts: List[int], steps, args) -> Dict[str, str]:
    """All rows for `model_types`, written after each model; returns the written paths."""


    torch.backends.cuda.matmul.allow_tf32 = False
    n = 256 if args.quick else 8192
    rates = {"fp32": matmul_tflops(device, torch.float32, n, 3 if args.quick else 10),
             "bf16": matmul_tflops(device, torch.bfloat16, n, 3 if args.quick else 10)}
    torch.backends.cuda.matmul.allow_tf32 = True
    rates["tf32"] = matmul_tflops(device, torch.float32, n, 3 if args.quick else 10) if device.startswith("cuda") else rates["fp32"]
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"measured matrix rates (TFLOP/s, {n}^3): {rates}", flush=True)
    rows: List[dict] = [{"kind": "matmul", "device": device, "n": n, **{f"{k}_tflops": v for k, v in rates.items()}}]
    paths: Dict[str, str] = {}
    for model_type in model_types:
        m = Model(model_type, device, image_size=args.image_size)
        for part in (lambda: encoder_rows(m, steps, args, rates), lambda: decoder_rows(m, prompts, args),
                     lambda: click_rows(m, args)):
            rows += part()
            paths = write_rows(rows, out, "gpu")
        del m
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="results folder (new, or one samrt wrote)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-types", default="vit_b,vit_l,vit_h")
    ap.add_argument("--prompts", default="1,4,16,64,256,1024", help="decoder prompt counts P")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"encoder steps, of {', '.join(STEPS)}")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--image-size", type=int, help="the encoder's input side (default: the model's, 1024)")
    ap.add_argument("--quick", action="store_true", help="small matrix-rate probe, few iterations")
    args = ap.parse_args(argv)
    if args.quick:
        args.iters, args.warmup = min(args.iters, 3), min(args.warmup, 1)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"--steps: got {unknown}, expected some of {list(STEPS)}")
    paths = run(args.out, [t for t in args.model_types.split(",") if t], args.device,
                [int(p) for p in args.prompts.split(",") if p], steps, args)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
