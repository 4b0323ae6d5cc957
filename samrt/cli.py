"""The `samrt` command: a thin layer that parses arguments and calls library functions.

Heavy dependencies (torch, onnx) are imported inside the subcommands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from .errors import SamrtError

MODEL_TYPES = ["auto", "default", "vit_h", "vit_l", "vit_b", "tiny"]


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="official SAM checkpoint -> checked encoder and decoder ONNX graphs")
    p.add_argument("--model-type", default="auto", choices=MODEL_TYPES,
                   help="expected model type; 'auto' detects it from the checkpoint's tensor shapes")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official state-dict file, e.g. sam_vit_b_01ec64.pth")
    src.add_argument("--random-init", action="store_true",
                     help="seeded random weights (masks mean nothing; to try the pipeline without weights)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init and the check inputs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="file name prefix (default: the model type)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from samrt.export import export_sam, load_sam, random_sam
    from samrt.export.checkpoint import RANDOM_INIT_WARNING
    from samrt.spec import get_config

    if args.random_init:
        if args.model_type in ("auto",):
            raise SamrtError("--random-init needs --model-type (vit_b, vit_l, vit_h or tiny), got 'auto'")
        cfg = get_config("vit_h" if args.model_type == "default" else args.model_type)
        print(f"WARNING: {RANDOM_INIT_WARNING}", file=sys.stderr)
        sam = random_sam(cfg, seed=args.seed)
    else:
        sam, cfg = load_sam(args.checkpoint, args.model_type)
        print(f"loaded {args.checkpoint}: {cfg.model_type}", file=sys.stderr)
    result = export_sam(sam, cfg, args.out, name=args.name, checkpoint=args.checkpoint,
                        random_init=args.random_init, seed=args.seed)
    for graph in ("encoder", "decoder"):
        for check in result.report[graph]["checks"]:
            diffs = ", ".join(f"{k} max abs {v['max_abs_diff']:.2e}" for k, v in check["outputs"].items())
            print(f"{graph} check {check['input_shapes'].get('point_coords', check['input_shapes'].get('image'))}: {diffs}")
    print(f"wrote {result.encoder_path}\nwrote {result.decoder_path}\nwrote {result.report_path}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="export (if needed) and segment a generated sample from one click")
    p.add_argument("--model-type", default="vit_b", choices=MODEL_TYPES[2:])
    p.add_argument("--checkpoint", help="official checkpoint (default: seeded random init)")
    p.add_argument("--out", default="build/demo", help="output folder")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from samrt.demo import run_local_demo

    result = run_local_demo(args.out, model_type=args.model_type, checkpoint=args.checkpoint)
    print(json.dumps(result, indent=2))
    print(f"\noverlay written to {os.path.abspath(result['overlay'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samrt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_demo(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except SamrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
