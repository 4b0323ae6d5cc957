"""The `samrt` command: a thin layer that parses arguments and calls library functions.

What needs an optional dependency is imported inside the subcommands that use it (torch for
`train`; tritonclient, through `samrt.client`, for the client commands, the demo, `amg --ray` and
the benchmarks; aiohttp for `annotate`), so each extra breaks only its own subcommands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import List, Optional

from samrt import imageio
from samrt.amg import AmgOptions
from samrt.artifacts import check_output_dir, default_checkpoint, served_model_card
from samrt.engines.build import DEFAULT_MIN_MEAN_IOU, build_engine
from samrt.errors import SamrtError
from samrt.model_repository.render import RepoOptions
from samrt.spec import MODEL_CONFIGS, MODEL_TYPE_CHOICES
from samrt.variants import BACKENDS, DECODERS, PRECISIONS, SERVING_BACKENDS

from . import pipeline
from .exports import parse_formats, read_documents, write_exports


_MODEL_TYPE_HELP = "expected model type; 'auto' detects it from the checkpoint's tensor shapes"


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="official SAM checkpoint -> checked encoder and decoder ONNX graphs")
    p.add_argument("--model-type", default="auto", choices=MODEL_TYPE_CHOICES,
                   help="expected model type; 'auto' detects it from the checkpoint's tensor shapes")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official state-dict file, e.g. sam_vit_b_01ec64.pth")
    src.add_argument("--random-init", action="store_true",
                     help="seeded random weights (masks mean nothing; to try the pipeline without weights)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init and the check inputs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="file name prefix (default: the model type)")
    _memory_check_option(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    result = pipeline.export_model(args.out, args.model_type, args.checkpoint, args.random_init, args.seed, args.name,
                                   memory_check=args.memory_check)
    for graph in ("encoder", "decoder"):
        for check in result.report[graph]["checks"]:
            diffs = ", ".join(f"{k} max abs {v['max_abs_diff']:.2e}" for k, v in check["outputs"].items())
            print(f"{graph} check {check['input_shapes'].get('point_coords', check['input_shapes'].get('image'))}: {diffs}")
    for check in result.report["fast_decoder"]["checks"]:
        diffs = ", ".join(f"{k} max abs {v['max_abs_diff']:.2e}" for k, v in check["outputs"].items())
        print(f"fast decoder check against the decoder {check['input_shapes']}: {diffs}")
    for path in [result.encoder_path, result.decoder_path, *result.fast_decoder_paths.values(), result.report_path]:
        print(f"wrote {path}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="serve on tritonserver, segment a generated sample from one click, write an overlay")
    p.add_argument("--checkpoint", help="SAM checkpoint (default: the embedded samrt_small model)")
    p.add_argument("--model-type", default="auto", choices=MODEL_TYPE_CHOICES, help=_MODEL_TYPE_HELP)
    p.add_argument("--random-init", action="store_true", help="seeded random weights (masks mean nothing)")
    p.add_argument("--out", default="build/demo", help="output folder")
    _memory_check_option(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import run_demo  # tritonclient (samrt.client): the client extra

    result = run_demo(args.out, args.checkpoint, args.model_type, args.random_init, memory_check=args.memory_check)
    print(json.dumps(result, indent=2))
    if result["random_init"]:
        print("\nWARNING: random-init weights: the mask means nothing.")
    print(f"\noverlay written to {result['overlay']} (the best-scored mask; all three: {result['candidates']})")
    return 0


def _add_train(sub) -> None:
    # Options left out keep TrainOptions' own defaults (cmd_train fills them in: the parser is built
    # without importing torch).
    keep = argparse.SUPPRESS
    p = sub.add_parser("train", help="train the small SAM on generated scenes (seeded, resumable)")
    p.add_argument("--out", required=True, help="state-dict file to write (official layout)")
    p.add_argument("--steps", type=int, default=keep, help="optimizer steps (default 2400)")
    p.add_argument("--threads", type=int, default=keep, help="torch threads (0: torch's default)")
    p.add_argument("--max-minutes", type=float, default=keep, help="stop resumably after this long")
    p.add_argument("--seed", type=int, default=keep, help="scene stream (use a new one when continuing from --init)")
    p.add_argument("--lr", type=float, default=keep, help="peak learning rate (warm-up, then cosine to 0)")
    p.add_argument("--init", help="start from these weights (e.g. samrt/assets/sam_samrt_small.pth)")
    p.add_argument("--curriculum-steps", type=int, default=keep, help="steps of large objects first (0: none)")
    p.add_argument("--warmup", type=int, default=keep, help="linear warm-up steps before the cosine decay")
    p.add_argument("--batch-images", type=int, default=keep, help="scenes per step")
    p.add_argument("--prompts-per-image", type=int, default=keep, help="prompted targets per scene")
    p.add_argument("--correction-rounds", type=int, default=keep, help="error-region clicks after the first prompt")
    p.add_argument("--scene-long-side", type=_pair(int), default=keep, metavar="MIN,MAX",
                   help="draw scenes at a long side in this range, then resize (192,640: as the held-out set)")
    p.add_argument("--aspect-range", type=_pair(float), default=keep, metavar="MIN,MAX",
                   help="scene aspect ratio w/h range (0.5,2.0: as the held-out set)")
    p.add_argument("--device", default=keep, help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=keep, help="scene-generating processes (0: in the training process)")
    p.add_argument("--image-size", type=int, default=256,
                   help="model input size (px); an --init model of another size has its position tables resized")
    p.add_argument("--loss-size", type=int, default=keep,
                   help="grid side the mask loss is computed on (0: the input size; e.g. 256 at --image-size 512)")
    p.add_argument("--checkpoint-every", type=int, default=keep, help="steps between resumable state files")
    p.set_defaults(func=cmd_train)


def _pair(kind):
    def parse(text: str):
        parts = text.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            return kind(parts[0]), kind(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected two {kind.__name__} values as MIN,MAX") from None

    return parse


def cmd_train(args) -> int:
    from samrt.export.training import SMALL_CONFIG, TrainOptions, train  # torch: the train extra

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions) if hasattr(args, f.name)}
    opts = TrainOptions(**given)
    if args.image_size <= 0 or args.image_size % SMALL_CONFIG.patch_size:
        raise SamrtError(f"--image-size: got {args.image_size}, expected a positive multiple of the patch size "
                         f"{SMALL_CONFIG.patch_size} (e.g. 256 or 512)")
    cfg = dataclasses.replace(SMALL_CONFIG, image_size=args.image_size)
    print(json.dumps(train(args.out, opts, cfg=cfg, init=args.init), indent=2))
    return 0


def _repo_options(p) -> None:
    d = RepoOptions()  # the library's defaults, stated once
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"], help="where the models run")
    p.add_argument("--backend", default="auto", choices=SERVING_BACKENDS,
                   help="auto: per graph, the fastest engine that passes the accuracy gate (on a CPU: the encoder in "
                        "OpenVINO int8-dynamic where the CPU has int8 dot-product units (VNNI/AMX), else bf16 where "
                        "bf16 is native, else fp32, else ONNX Runtime fp32; the decoder in float), built on first use and "
                        "reused; onnxruntime / openvino: that backend's engines in python-backend models; "
                        "onnxruntime-native / openvino-native / tensorrt: the production variant for NVIDIA's "
                        "Triton container (rendered here, not run)")
    p.add_argument("--precision", default="auto", choices=("auto",) + PRECISIONS,
                   help="auto: as --backend says; fp32 with --backend onnxruntime: the exact path (the exported "
                        "graphs, equal to SamPredictor up to float rounding); int8-dynamic: the encoder's linear layers "
                        "in int8, activations quantised at run time (no calibration; the default encoder on CPUs "
                        "with VNNI/AMX); int8: the encoder calibrated (built on request; once built and passed, "
                        "later starts with auto serve it when it is faster); the decoder stays in float")
    p.add_argument("--decoder", default="fast", choices=sorted(DECODERS),
                   help="fast: the exact, lighter decoder (per-image precompute, fixed prompt slots); classic: "
                        "the decoder graph as other tools consume it")
    p.add_argument("--cache-bytes", type=int, default=d.cache_bytes, help="embedding cache budget (LRU, bytes)")
    p.add_argument("--cache-dir", default=d.cache_dir,
                   help="a disk tier under the embedding cache: embeddings survive restarts (new, empty, or "
                        "a folder samrt made for it)")
    p.add_argument("--cache-dir-bytes", type=int, default=d.cache_dir_bytes,
                   help="bound of --cache-dir in bytes (LRU; default 16 GiB)")
    p.add_argument("--max-prompts", type=int, default=d.max_prompts, help="prompts per sam_decode request")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest image (pixels) sam_encode and sam_amg accept; default 8192*8192 = 67 M")
    p.add_argument("--encoder-max-batch", type=int, default=d.encoder_max_batch,
                   help=f"images the encoder's batcher gathers (default {d.encoder_max_batch}); a CPU runs them one "
                        "at a time, so its memory does not grow with it there; a GPU runs them at once (docs/memory.md)")


def _opts(args):
    return RepoOptions(device=args.device, cache_bytes=args.cache_bytes, max_prompts=args.max_prompts,
                       max_pixels=args.max_pixels, cache_dir=args.cache_dir, cache_dir_bytes=args.cache_dir_bytes,
                       encoder_max_batch=args.encoder_max_batch)


def _memory_check_option(p) -> None:
    p.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="start even where the memory estimate (docs/memory.md) exceeds what this machine has "
                        "available (by default such a start is refused before it begins)")


def _add_build_repo(sub) -> None:
    p = sub.add_parser("build-repo", help="render the Triton model repository for an export folder")
    p.add_argument("--export", required=True, help="folder written by `samrt export`")
    p.add_argument("--out", required=True, help="repository folder to write")
    _repo_options(p)
    p.set_defaults(func=cmd_build_repo)


def cmd_build_repo(args) -> int:
    print(f"wrote {pipeline.repository_for_export(args.export, args.out, _opts(args), args.backend, args.precision, args.decoder)}")
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="export if needed, render the repository, run tritonserver until Ctrl-C")
    p.add_argument("--checkpoint", help="SAM checkpoint (default: the embedded samrt_small model)")
    p.add_argument("--model-type", default="auto", choices=MODEL_TYPE_CHOICES, help=_MODEL_TYPE_HELP)
    p.add_argument("--random-init", action="store_true", help="seeded random weights (masks mean nothing)")
    p.add_argument("--build-dir", default="build/serve", help="where the export and repository go")
    p.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    p.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP/REST endpoint")
    p.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC endpoint")
    p.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics")
    _repo_options(p)
    _memory_check_option(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    pipeline.serve(args.build_dir, args.checkpoint, args.model_type, _opts(args), args.random_init, args.precision,
          host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
          backend=args.backend, decoder=args.decoder, memory_check=args.memory_check)
    return 0


def _client_args(p) -> None:
    p.add_argument("--url", default="localhost:8001",
                   help="server endpoint (gRPC 8001 or HTTP 8000), or several replicas comma-separated "
                        "(host1:8001,host2:8001): each image goes to one by a consistent hash of its id")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"], help="the endpoint's protocol")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for any one request")


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment an image from clicks and/or a box through a samrt server")
    p.add_argument("image", help="image file (JPEG, PNG, ...)")
    p.add_argument("--point", action="append", default=None,
                   help="x,y or x,y:label (1 foreground, the default; 0 background), image pixels; repeatable")
    p.add_argument("--box", help="x0,y0,x1,y1")
    p.add_argument("--out", required=True, help="mask PNG to write")
    p.add_argument("--overlay", help="overlay PNG to write")
    _client_args(p)
    p.set_defaults(func=cmd_segment)


def cmd_segment(args) -> int:
    from samrt.client import SamClient  # tritonclient: the client extra
    from samrt.client.cli import segment_file

    with SamClient(args.url, args.protocol, timeout=args.timeout) as client:
        print(json.dumps(segment_file(client, args.image, args.point or [], args.box, args.out, args.overlay), indent=2))
    return 0


def _add_amg(sub) -> None:
    d = AmgOptions()  # SamAutomaticMaskGenerator's defaults, stated once in the library
    card = "default: what the served model's card recommends ({}), else SAM's {}"
    p = sub.add_parser("amg", help="automatic masks for a folder of images: one SA-1B style JSON each")
    p.add_argument("folder", help="folder of images")
    p.add_argument("--out", required=True, help="folder for the JSON files")
    p.add_argument("--points-per-side", type=int, default=None, help=card.format("none for the embedded model",
                                                                                d.points_per_side))
    p.add_argument("--pred-iou-thresh", type=float, default=None,
                   help=card.format("0.5 for the embedded model", d.pred_iou_thresh))
    p.add_argument("--stability-score-thresh", type=float, default=None,
                   help=card.format("0.85 for the embedded model", d.stability_score_thresh))
    p.add_argument("--crop-n-layers", type=int, default=d.crop_n_layers, help="crop layers (4^i crops each)")
    p.add_argument("--min-mask-region-area", type=int, default=d.min_mask_region_area,
                   help="remove holes and islands smaller than this (px; 0: off)")
    p.add_argument("--format", default="sa1b",
                   help="beside the SA-1B JSON per image (COCO RLE): coco (polygons, OUT/coco/instances.json), "
                        "yolo (Ultralytics, OUT/yolo/), label-studio (tasks with predictions, OUT/label-studio/); "
                        "comma-separated")
    p.add_argument("--image-url", help="label-studio: prefix of the tasks' image URLs (default "
                                       "/data/local-files/?d=<folder name>/, Label Studio's local files)")
    _client_args(p)
    r = p.add_argument_group("on Ray, in-process engines instead of a server (pip install 'samrt[ray]')")
    r.add_argument("--ray", action="store_true", help="run on a Ray cluster: resumable, failures to OUT/failures.jsonl")
    r.add_argument("--ray-address", help="join this cluster (e.g. HEAD_IP:6379 or auto); default: start a local one")
    r.add_argument("--actors", type=int, default=None, help="engines running in parallel (Ray actors; default 1)")
    r.add_argument("--cpus-per-actor", type=int, help="default: the cluster's CPUs divided among the actors")
    r.add_argument("--checkpoint", help="SAM checkpoint (default: the embedded samrt_small model)")
    r.add_argument("--build-dir", default="build/amg", help="where the model is exported (once, on this machine)")
    p.set_defaults(func=cmd_amg)


def cmd_amg(args) -> int:
    formats = parse_formats(args.format)
    rc = _cmd_amg_ray(args) if args.ray else _cmd_amg_server(args)
    if formats:  # the documents of this folder's images only (an earlier run's of other images stay out)
        stems = {os.path.splitext(n)[0] for n in imageio.list_images(args.folder)}
        names = sorted(n for n in os.listdir(args.out) if n.endswith(".json") and n[:-5] in stems)
        for fmt, path in write_exports(formats, read_documents(args.out, names), args.out, args.folder,
                                       args.image_url).items():
            print(f"wrote {fmt}: {path}")
    return rc


def _cmd_amg_server(args) -> int:
    given = [f for f, v in (("--ray-address", args.ray_address), ("--checkpoint", args.checkpoint),
                            ("--actors", args.actors is not None), ("--cpus-per-actor", args.cpus_per_actor)) if v]
    if given:
        raise SamrtError(f"{', '.join(given)}: only with --ray (without it, amg runs on the server at --url)")
    from tqdm import tqdm  # tqdm: the client extra

    from samrt.client import SamClient  # tritonclient: the client extra
    from samrt.client.cli import amg_folder

    def report(name, masks, skipped):
        tqdm.write(f"{name}: {masks} masks" if skipped is None else f"{name}: skipped ({skipped})", file=sys.stderr)

    with SamClient(args.url, args.protocol, timeout=args.timeout) as client:
        result = amg_folder(client, args.folder, args.out, on_image=report, **_amg_given(args))
        model = client.model_info().get("model") or "the served model"
    print(f"options: points_per_side {result.options['points_per_side']}, pred_iou_thresh "
          f"{result.options['pred_iou_thresh']}, stability_score_thresh {result.options['stability_score_thresh']} "
          f"(given, else {model}'s card, else SAM's defaults)")
    print(f"wrote {len(result.written)} files to {args.out}: {result.total} masks in all"
          + (f"; skipped {len(result.skipped)}: {', '.join(result.skipped)}" if result.skipped else ""))
    return 1 if result.skipped else 0  # as `samrt encode` and `amg --ray`: 1 when an image was not done


def _amg_given(args) -> dict:
    """The automatic-mask options given on the command line (None: not given)."""
    return {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
            "stability_score_thresh": args.stability_score_thresh, "crop_n_layers": args.crop_n_layers,
            "min_mask_region_area": args.min_mask_region_area}


def _add_label_studio(sub) -> None:
    p = sub.add_parser("label-studio", help="Label Studio's ML backend: interactive SAM masks and pre-annotation")
    p.add_argument("--url", default="localhost:8001", help="the samrt server (`samrt serve`), or replicas comma-separated")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"], help="protocol of --url")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=9090, help="Label Studio's ML backends' usual port")
    p.add_argument("--preannotate", action="store_true",
                   help="automatic masks for tasks opened without a prompt, in every project (a project can ask "
                        "for it alone with extra_params {\"preannotate\": true})")
    p.add_argument("--preannotate-timeout", type=float, default=60.0,
                   help="seconds per task for automatic masks (keep it below Label Studio's ML_TIMEOUT_PREDICT, 100)")
    p.add_argument("--points-per-side", type=int, default=None,
                   help="pre-annotation grid (default: the served model's card, else SAM's 32)")
    p.add_argument("--pred-iou-thresh", type=float, default=None,
                   help="pre-annotation filter (default: the served model's card, 0.5 for the embedded model; "
                        "else SAM's 0.88)")
    p.add_argument("--stability-score-thresh", type=float, default=None,
                   help="pre-annotation filter (default: the served model's card, 0.85 for the embedded model; "
                        "else SAM's 0.95)")
    p.set_defaults(func=cmd_label_studio)


def cmd_label_studio(args) -> int:
    from .label_studio.app import run_label_studio  # aiohttp, label_studio_converter: the label-studio extra

    run_label_studio(args.url, args.host, args.port, protocol=args.protocol, preannotate=args.preannotate,
                     preannotate_timeout=args.preannotate_timeout,
                     amg_options={"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
                                  "stability_score_thresh": args.stability_score_thresh})
    return 0


def _add_encode(sub) -> None:
    p = sub.add_parser("encode", help="embed a folder of images on the server ahead of time (resumable)")
    p.add_argument("folder")
    p.add_argument("--workers", type=int, default=4, help="requests in flight (the server's encoder batch: 4)")
    _client_args(p)
    p.set_defaults(func=cmd_encode)


def cmd_encode(args) -> int:
    from samrt.client import SamClient  # tritonclient: the client extra
    from samrt.client.cli import encode_folder

    with SamClient(args.url, args.protocol, timeout=args.timeout) as client:
        summary = encode_folder(client, args.folder, args.workers)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0


def _add_annotate(sub) -> None:
    p = sub.add_parser("annotate", help="SAM's data engine in a browser: click, accept, next; SA-1B JSON per image")
    p.add_argument("folder", help="folder of images to annotate")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier one to continue)")
    p.add_argument("--host", default="127.0.0.1", help="address of the page (default: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port of the page")
    p.add_argument("--url", help="a running `samrt serve` (host:port; default: start a server here)")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"], help="protocol of --url")
    p.add_argument("--checkpoint", help="SAM checkpoint for the server it starts (default: the embedded model)")
    p.add_argument("--model-type", default="auto", choices=MODEL_TYPE_CHOICES, help=_MODEL_TYPE_HELP)
    p.add_argument("--build-dir", default="build/annotate", help="where the server it starts keeps export and repository")
    p.add_argument("--prefetch", type=int, default=2, help="images encoded ahead of the one being annotated")
    _memory_check_option(p)
    p.add_argument("--amg-points-per-side", type=int, default=None,
                   help="prefill grid (default: 16, a quarter of SAM's 32 x 32 points)")
    p.add_argument("--amg-pred-iou-thresh", type=float, default=None,
                   help="prefill filter (default: what the served model's card recommends, 0.5 for the embedded "
                        "model; else SAM's 0.88)")
    p.add_argument("--amg-stability-score-thresh", type=float, default=None,
                   help="prefill filter (default: the served model's card, 0.85 for the embedded model; else SAM's 0.95)")
    p.set_defaults(func=cmd_annotate)


def cmd_annotate(args) -> int:
    from samrt.app.annotate import run_annotate  # aiohttp: the annotate extra

    run_annotate(args.folder, args.out, args.url, args.protocol, args.host, args.port, args.checkpoint, args.model_type,
                 args.build_dir, args.prefetch,
                 {"points_per_side": args.amg_points_per_side, "pred_iou_thresh": args.amg_pred_iou_thresh,
                  "stability_score_thresh": args.amg_stability_score_thresh}, memory_check=args.memory_check)
    return 0


def _cmd_amg_ray(args) -> int:
    from .dataset_amg import run_dataset_amg  # ray, tritonclient: the ray extra

    checkpoint = args.checkpoint or default_checkpoint()
    card = (served_model_card(checkpoint) or {}) if checkpoint else {}   # the model's own AMG options
    opts = AmgOptions.from_fields({**(card.get("amg_options") or {}),
                                   **{k: v for k, v in _amg_given(args).items() if v is not None}})
    summary = run_dataset_amg(args.folder, args.out, opts, checkpoint=args.checkpoint,
                              export_dir=os.path.join(args.build_dir, "export"), ray_address=args.ray_address,
                              actors=args.actors or 1, cpus_per_actor=args.cpus_per_actor)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="point/box mIoU on the held-out generated scenes (the paper's figures)")
    p.add_argument("--checkpoint", help="SAM checkpoint (default: the embedded samrt_small model)")
    p.add_argument("--onnx-dir", help="evaluate an export folder through ONNX Runtime instead of PyTorch")
    p.add_argument("--scenes", type=int, default=60, help="held-out scenes to evaluate on")
    p.add_argument("--out", help="JSON file for the figures")
    p.add_argument("--device", default="cpu", help="torch device for a --checkpoint (cpu, cuda, ...)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    result = pipeline.evaluate_model(args.checkpoint, args.onnx_dir, args.scenes, args.device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def _add_build_engine(sub) -> None:
    p = sub.add_parser("build-engine", help="an optimized encoder engine with its accuracy report and gate")
    p.add_argument("--onnx", required=True, help="an export's *.encoder.onnx, *.decoder.onnx or *.fast_decoder.onnx")
    p.add_argument("--backend", default="onnxruntime", choices=sorted(BACKENDS), help="engine kind")
    p.add_argument("--precision", default="int8", choices=PRECISIONS,
                   help="fp16: onnxruntime, tensorrt; bf16: openvino (native on CPUs with AVX512_BF16/AMX); "
                        "int8-dynamic: openvino, the encoder (int8 weights, activations quantised at run time, "
                        "no calibration)")
    p.add_argument("--calib-images", help="folder of calibration images for int8 (default: generated scenes)")
    p.add_argument("--out", required=True, help="output folder (usually the export folder)")
    p.add_argument("--min-mean-iou", type=float, default=DEFAULT_MIN_MEAN_IOU,
                   help="accuracy gate: mean mask IoU against fp32")
    p.add_argument("--eval-images", type=int, default=8, help="held-out scenes for the accuracy check")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the engine runs")
    p.set_defaults(func=cmd_build_engine)


def cmd_build_engine(args) -> int:
    calib = None
    if args.calib_images:
        calib = [imageio.load_image(os.path.join(args.calib_images, n)) for n in imageio.list_images(args.calib_images)]
    report = build_engine(args.onnx, args.out, args.backend, args.precision, calib, args.min_mean_iou,
                          args.eval_images, device=args.device)
    acc, speed = report["accuracy"], report["speed"]
    print(f"wrote {report['path']} ({report['bytes'] / 2**20:.1f} MiB)\n"
          f"accuracy vs fp32: mean mask IoU {acc['mean_mask_iou']:.4f}, worst {acc['worst_mask_iou']:.4f}, "
          f"max score diff {acc['max_score_diff']:.4f}\n"
          f"speed: fp32 {speed['fp32_ms']:.0f} ms, engine {speed['engine_ms']:.0f} ms ({speed['speedup']:.2f}x)\n"
          f"report {report['report_path']}")
    if report["details"].get("bf16_note"):  # openvino on a CPU without native bf16
        print(f"note: {report['details']['bf16_note']}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency and throughput benchmarks (rows as JSON/CSV with the machine, plots)")
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind in ("engines", "decoder", "serve", "amg", "memory", "e2e"):
        k = kinds.add_parser(kind)
        k.add_argument("--out", required=True, help="results folder, e.g. benchmarks/results/<machine>/")
        k.add_argument("--quick", action="store_true", help="a smoke run (under two minutes, but e2e: one client, "
                                                              "a small image; its export and engine builds still run)")
        k.add_argument("--build-dir", default="build/bench", help="where exports and servers go")
        if kind != "amg":
            k.add_argument("--model-type", default="vit_b", choices=list(MODEL_CONFIGS), help="model to measure")
            k.add_argument("--checkpoint", help="its weights (default: seeded random ones)")
        if kind == "e2e":
            k.add_argument("--clients", type=int, default=4, help="clients encoding and clicking at once (the load step)")
            k.add_argument("--serve-args", default="", help="flags added to `samrt serve` (default: none, the "
                                                            "default path), written with '=': "
                                                            "--serve-args='--backend onnxruntime --precision fp32'")
        if kind not in ("engines", "memory", "e2e"):
            k.add_argument("--url", help="a running server's gRPC endpoint (default: start servers here)"
                           if kind == "serve" else "a running server's gRPC endpoint", required=kind == "amg")
        if kind == "engines":
            k.add_argument("--prompts", default="1,4,16,64,256",
                           help="decoder prompt counts P (vit_b at P=256 needs more than 24 GB beside PyTorch)")
            k.add_argument("--export-dir", help="an export folder to measure, reusing the engines already built "
                                                "there with `samrt build-engine` (default: <build-dir>/export_<model>)")
            k.add_argument("--ort-precisions", default="fp32,int8,fp16", help="ONNX Runtime encoder engines")
            k.add_argument("--openvino-precisions", default="fp32,bf16,int8,int8-dynamic",
                           help="OpenVINO encoder engines (the decoder: fp32/bf16 among them); '' for none")
        if kind in ("serve", "memory"):
            k.add_argument("--backend", default="auto", choices=SERVING_BACKENDS[:3],
                           help="engines of the servers started here, chosen as `samrt serve` chooses them")
            k.add_argument("--precision", default="auto", choices=("auto",) + PRECISIONS,
                           help="as `samrt serve --precision`")
            k.add_argument("--decoder", default="fast", choices=sorted(DECODERS), help="as `samrt serve --decoder`")
        if kind == "memory":
            k.add_argument("--clients", default="4,32", help="clients at once in each load phase, each encoding "
                                                             "new images and clicking")
            k.add_argument("--rounds", type=int, default=2, help="new images per client in a load phase")
            k.add_argument("--clicks", type=int, default=5, help="clicks per image")
            k.add_argument("--encoder-max-batch", type=int, default=RepoOptions().encoder_max_batch,
                           help="as `samrt serve --encoder-max-batch`")
        if kind == "serve":
            k.add_argument("--scenarios", default="sessions,interactive,encode",
                           help="sessions: clients encoding and clicking (a concurrency sweep, batching on/off); "
                                "interactive: one client clicking, idle and while another streams new images; "
                                "encode: new images through sam_encode vs ONNX Runtime fp32 in this process")
            k.add_argument("--concurrency", default="1,4,16", help="clients at once, per run")
            k.add_argument("--clicks", type=int, default=10, help="clicks per client")
        if kind == "amg":
            k.add_argument("--images", help="folder of images (default: generated scenes)")
            k.add_argument("--points-per-side", type=int, default=32, help="AMG grid")
            k.add_argument("--reference-checkpoint",
                           help="run the official SamAutomaticMaskGenerator on this checkpoint in this process, "
                                "same images and parameters, for the speedup (the server's own checkpoint)")
    k = kinds.add_parser("upscale", help="mask upscaling per click: samrt.upscale vs the old numpy path vs torch")
    k.add_argument("--out", required=True, help="results folder, e.g. benchmarks/results/<machine>/")
    k.add_argument("--quick", action="store_true", help="a smoke run on a tiny size (seconds)")
    p.set_defaults(func=cmd_bench)


def _names(csv: str) -> List[str]:
    return [n for n in csv.split(",") if n]


def _counts(csv: str, flag: str) -> List[int]:
    """A comma-separated list of positive integers (`--concurrency 1,4,16`); SamrtError otherwise."""
    try:
        values = [int(n) for n in _names(csv)]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SamrtError(f"{flag}: got {csv!r}, expected positive integers separated by commas (e.g. 1,4,16)")
    return values


def cmd_bench(args) -> int:
    from samrt.benchmarks import run as bench_run  # tritonclient (samrt.client), torch: the dev extra

    check_output_dir(args.out, "bench")  # refused before anything runs, not after (nothing in it is changed)
    if args.kind == "decoder":
        paths = bench_run.run_decoder(args.out, args.model_type, args.checkpoint, args.quick, args.build_dir)
    elif args.kind == "engines":
        paths = bench_run.run_engines(args.out, args.model_type, args.checkpoint, args.quick, args.build_dir, args.export_dir,
                                 _counts(args.prompts, "--prompts"), _names(args.ort_precisions),
                                 _names(args.openvino_precisions))
    elif args.kind == "serve":
        conc = _counts(args.concurrency, "--concurrency")
        paths = bench_run.run_serve(args.out, args.model_type, args.checkpoint, args.quick, args.build_dir, args.url,
                              conc, args.clicks, [s for s in args.scenarios.split(",") if s], args.backend,
                              args.precision, args.decoder)
    elif args.kind == "upscale":
        paths = bench_run.run_upscale(args.out, args.quick)
    elif args.kind == "memory":
        paths = bench_run.run_memory(args.out, args.model_type, args.checkpoint, args.quick, args.build_dir,
                                     _counts(args.clients, "--clients"), args.rounds, args.clicks,
                                     args.backend, args.precision, args.decoder, args.encoder_max_batch)
    elif args.kind == "e2e":
        paths = bench_run.run_e2e(args.out, args.model_type, args.checkpoint, args.quick, args.build_dir,
                                  args.clients, args.serve_args.split())
    else:
        paths = bench_run.run_amg(args.out, args.url, args.images, args.quick, args.points_per_side,
                                  args.reference_checkpoint)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it has none (None, a flag) or says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _with_help_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _Help
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _with_help_defaults(sub)


# What each command needs installed beyond the client: pyproject's extras.
COMMAND_EXTRAS = {"serve": "serve,export,cpu", "demo": "serve,export,cpu", "export": "export", "train": "train",
                  "build-repo": "serve", "build-engine": "export,cpu,openvino", "eval": "export,cpu",
                  "annotate": "annotate,serve,export,cpu", "segment": "client", "amg": "client",
                  "bench": "dev"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samrt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_build_repo(sub)
    _add_serve(sub)
    _add_segment(sub)
    _add_amg(sub)
    _add_encode(sub)
    _add_label_studio(sub)
    _add_build_engine(sub)
    _add_bench(sub)
    _add_eval(sub)
    _add_annotate(sub)
    _with_help_defaults(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except SamrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an extra this install lacks: say which to install
        if e.name is None or e.name.split(".")[0] in ("samrt",):
            raise
        extras = COMMAND_EXTRAS.get(args.command, "dev")
        if args.command == "amg" and getattr(args, "ray", False):
            extras = "ray"
        print(f"error: samrt {args.command} needs the Python package {e.name.split('.')[0]!r}, which this install "
              f"lacks: pip install 'samrt[{extras}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
