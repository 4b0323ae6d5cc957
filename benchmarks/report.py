"""Markdown tables from benchmark results (what docs/benchmarks.md shows): `python -m samrt.benchmarks.report DIR`."""

from __future__ import annotations

import json
import os
import sys
from typing import List


def _load(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)["rows"]


def engines_table(rows: List[dict]) -> str:
    enc = [r for r in rows if r.get("stage") == "encoder" and "p50_ms" in r]
    if not enc:
        return ""
    ref = next((r["p50_ms"] for r in enc if r["backend"] == "pytorch-eager"), None)
    out = [f"Encoder, {enc[0]['model']} ({'random init' if enc[0]['random_init'] else 'trained'}), one image, "
           f"{enc[0]['machine']['cpu']} × {enc[0]['machine']['cores']} cores:", "",
           "| backend | precision | p50 ms | p90 ms | vs PyTorch | mean mask IoU vs fp32 |", "| --- | --- | --- | --- | --- | --- |"]
    for r in enc:
        acc = (r.get("accuracy_vs_fp32") or {}).get("mean_mask_iou")
        out.append(f"| {r['backend']} | {r['precision']} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | "
                   f"{ref / r['p50_ms']:.2f}× | {'' if acc is None else f'{acc:.4f}'} |")
    dec = [r for r in rows if r.get("stage") == "decoder" and r.get("num_points") == 1 and "p50_ms" in r]
    if dec:
        ov = sorted({r["precision"] for r in dec if r["backend"] == "openvino"}, key=("fp32", "bf16").index)
        out += ["", "Decoder, P prompts of one click on one embedding:", "",
                "| P | ONNX Runtime p50 ms | ms per prompt | PyTorch eager p50 ms |"
                + "".join(f" OpenVINO {p} p50 ms | ms per prompt |" for p in ov),
                "| --- | --- | --- | --- |" + " --- | --- |" * len(ov)]
        for p in sorted({r["num_prompts"] for r in dec}):
            o = next(r for r in dec if r["num_prompts"] == p and r["backend"] == "onnxruntime")
            t = next(r for r in dec if r["num_prompts"] == p and r["backend"] == "pytorch-eager")
            cells = [next(r for r in dec if r["num_prompts"] == p and r["backend"] == "openvino" and r["precision"] == q)
                     for q in ov]
            out.append(f"| {p} | {o['p50_ms']:.1f} | {o['ms_per_prompt']:.1f} | {t['p50_ms']:.1f} |"
                       + "".join(f" {c['p50_ms']:.1f} | {c['ms_per_prompt']:.1f} |" for c in cells))
        for q in ov:
            acc = next(r for r in dec if r["backend"] == "openvino" and r["precision"] == q).get("accuracy_vs_fp32")
            if acc:
                out.append(f"\nOpenVINO {q} decoder against fp32 (gate): mean mask IoU {acc['mean_mask_iou']:.4f}, "
                           f"worst {acc['worst_mask_iou']:.4f}, max score difference {acc['max_score_diff']:.4f}.")
    return "\n".join(out)


def serve_table(rows: List[dict]) -> str:
    srv = [r for r in rows if r.get("bench") == "serve" and r.get("click_to_mask")]
    if not srv:
        return ""
    ref = next((r for r in srv if r["protocol"].startswith("in-process")), None)
    out = [f"Interactive sessions ({srv[0]['model']}): encode + {srv[0]['clicks_per_session']} clicks per client; "
           "click-to-mask measured at the client. \"vs SamPredictor\" is the in-process reference's figure divided "
           "by this row's (above 1: faster than the reference):", "",
           "| batching | protocol | shm | clients | click p50 ms | p90 | p99 | clicks/s | amortized ms/click "
           "| vs SamPredictor (p50 / amortized) | 50 ms budget (p50 / amortized) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in srv:
        c = r["click_to_mask"]
        verdict = f"{'met' if r['budget_met_p50'] else 'missed'} / {'met' if r['budget_met_amortized'] else 'missed'}"
        ratio = ("" if ref is None else f"{ref['click_to_mask']['p50_ms'] / c['p50_ms']:.2f}× / "
                 f"{ref['amortized_ms_per_click'] / r['amortized_ms_per_click']:.2f}×")
        out.append(f"| {r['dynamic_batching']} | {r['protocol']} | {'yes' if r['shared_memory'] else 'no'} | "
                   f"{r['concurrency']} | {c['p50_ms']:.0f} | {c['p90_ms']:.0f} | {c['p99_ms']:.0f} | "
                   f"{r['throughput_clicks_per_s']:.1f} | {r['amortized_ms_per_click']:.0f} | {ratio} | {verdict} |")
    return "\n".join(out)


def interactive_table(rows: List[dict]) -> str:
    """One annotator clicking (480x640, masks + scores + low-res logits per click), idle and while
    another client streams new images to sam_encode, against SamPredictor.predict in the same run."""
    inter = [r for r in rows if r.get("bench") == "interactive"]
    if not inter:
        return ""
    r0 = inter[0]
    ref = r0.get("reference_sampredictor")
    out = [f"Clicks at interactive speed ({r0['model']}, {r0['image'][0]}×{r0['image'][1]} image already encoded, "
           f"{r0['idle']['n']} clicks per phase; {r0['machine']['cpu']} × {r0['machine']['cores']} cores). "
           f"`SamPredictor.predict` in one process, same clicks, same run: "
           + (f"p50 {ref['p50_ms']:.1f} ms, p90 {ref['p90_ms']:.1f} ms." if ref else "not measured (external server).")
           + (f" Engines served: {'; '.join(r0['engines'])}." if r0.get("engines") else ""),
           "", "| backend | protocol | idle p50 ms (100 ms pauses) | idle p90 | idle p50, masks from the server "
           "| no pauses p50 | loaded p50 ms | loaded p90 "
           "| encodes during | loaded / idle | vs SamPredictor | 64 boxes in one request: ms per box / one box alone "
           "| verdict (≤ 20 ms / ≥ 3× / ≤ 1.5× / boxes no slower) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in inter:
        vs = "" if r.get("vs_reference_p50") is None else f"{r['vs_reference_p50']:.2f}×"
        keys = ["met_click_ms", "met_vs_reference", "met_loaded_ratio"]
        verdicts = ["met" if r[k] else "missed" for k in keys]
        b = r.get("boxes")
        if b:
            boxes = f"{b['per_prompt_ms']:.1f} / {b['one_box_request']['p50_ms']:.1f}"
            verdicts.append("met" if b["met_no_slower_per_prompt"] else "missed")
        else:
            boxes = "not measured"
            verdicts.append("not measured")
        nopause = f"{r['idle_no_pause']['p50_ms']:.1f}" if r.get("idle_no_pause") else "not measured"
        server = f"{r['idle_masks_from_server']['p50_ms']:.1f}" if r.get("idle_masks_from_server") else "not measured"
        out.append(f"| {', '.join(r['engines']) if r.get('engines') else r.get('backend', '')} | {r['protocol']} | "
                   f"{r['idle']['p50_ms']:.1f} | {r['idle']['p90_ms']:.1f} | {server} | {nopause} | "
                   f"{r['loaded']['p50_ms']:.1f} | {r['loaded']['p90_ms']:.1f} | {r['encodes_during_clicks']} | "
                   f"{r['loaded_vs_idle_p50']:.2f}× | {vs} | {boxes} | {' / '.join(verdicts)} |")
    return "\n".join(out)


def new_image_table(rows: List[dict]) -> str:
    """New images through sam_encode against ONNX Runtime fp32 in one process (`bench serve`, "encode")."""
    out = []
    for r in rows:
        if r.get("bench") != "new_image":
            continue
        ref = r.get("reference_onnxruntime_fp32")
        engines = f" (engines served: {'; '.join(r['engines'])})" if r.get("engines") else ""
        out.append(f"New {r['image'][0]}×{r['image'][1]} images through the server{engines}, {r['protocol']}, "
                   f"{r['served']['n']} images: p50 {r['served']['p50_ms']:.0f} ms, p90 {r['served']['p90_ms']:.0f} ms"
                   + (f"; preprocessing + ONNX Runtime fp32 encoder in one process, same images, alternating: p50 "
                      f"{ref['p50_ms']:.0f} ms: {r['vs_reference_p50']:.2f}× "
                      f"({'met' if r['met_vs_reference'] else 'missed'} ≥ {r['target_vs_reference']:g}×)"
                      if ref else "; the reference was not run (external server)")
                   + (f"; the first {len(r['first_images_ms'])} images, not in the p50s: "
                      + ", ".join(f"{v:.0f}" for v in r["first_images_ms"]) + " ms" if r.get("first_images_ms") else "")
                   + f"; {r['machine']['cpu']} × {r['machine']['cores']} cores.")
    return "\n".join(out)


def amg_table(rows: List[dict]) -> str:
    if not rows:
        return ""
    return "\n".join(
        f"Automatic masks through `sam_amg` ({r['points_per_side']}² points"
        + (f", encoder {r['encoder_engine']}" if r.get("encoder_engine") else "")
        + f"): {r['images_per_s']:.3f} images/s (p50 {r['p50_ms'] / 1e3:.1f} s per new image), "
        f"{r['masks_per_image']:.1f} masks per image over {r['images']} images"
        + (f"; the official SamAutomaticMaskGenerator in one process, same images: p50 "
           f"{r['reference']['p50_ms'] / 1e3:.1f} s ({r['reference']['masks_per_image']:.1f} masks): "
           f"{r['speedup_p50']:.2f}× ({'met' if r['met_speedup'] else 'missed'} ≥ {r['target_speedup']:.0f}×)"
           if r.get("reference") else "") + "." for r in rows if r.get("bench") == "amg")


def decoder_table(rows: List[dict]) -> str:
    """`samrt bench decoder`: the decoders in one process (one click, 64 boxes) and the served encoder."""
    dec = [r for r in rows if r.get("stage") == "decoder" and "one_click" in r]
    if not dec:
        return ""
    r0 = dec[0]
    out = [f"Decoders in one process ({r0['model']}; {r0['machine']['cpu']} × {r0['machine']['cores']} cores): one "
           f"click (point + padding point) and {r0['boxes']} boxes in one call on a prepared image, no upscaling.", "",
           "| decoder | backend | precision | gate (mean mask IoU) | prepare_image ms | one click p50 ms | p90 | "
           "after a 100 ms pause p50 | per box (64 in one call) ms | verdict (≤ 8 ms / ≤ 6 ms per box) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in dec:
        gate = "exact path" if r["gate"] is None else f"{r['gate']['mean_mask_iou']:.4f}" + (
            "" if r["gate"]["passed"] else " (failed)")
        paused = f"{r['one_click_after_pause']['p50_ms']:.1f}" if "one_click_after_pause" in r else "–"
        out.append(f"| {r['decoder']} | {r['backend']} | {r['precision']} | {gate} | {r['prepare_image']['p50_ms']:.1f} | "
                   f"{r['one_click']['p50_ms']:.1f} | {r['one_click']['p90_ms']:.1f} | {paused} | {r['ms_per_box']:.1f} | "
                   f"{'met' if r['met_click_ms'] else 'missed'} / {'met' if r['met_box_ms'] else 'missed'} |")
    for r in dec:
        ab = r.get("one_click_state_ab")
        if ab:
            out += ["", f"{r['variant']}, one click, interleaved in one run: image_prep's tensors kept as bf16 "
                        f"{ab['bf16']['p50_ms']:.1f} ms p50 against float32 {ab['float32']['p50_ms']:.1f} ms "
                        f"({ab['float32']['p50_ms'] / ab['bf16']['p50_ms']:.2f}×; {ab['bf16']['n']} clicks each)."]
    for r in rows:
        if r.get("stage") == "encoder" and "served_ms" in r:
            out += ["", f"Encoder in one process: {r['served']} {r['served_ms']['p50_ms']:.0f} ms against "
                        f"{r['reference']} {r['reference_ms']['p50_ms']:.0f} ms: {r['speedup_p50']:.2f}×."]
    profiles = [(r["variant"], r["profile_one_click"]) for r in dec if r.get("profile_one_click")]
    for variant, prof in profiles:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in prof["by_type_ms"].items())
        out += ["", f"OpenVINO per-node profile, one click, {variant}: {prof['total_ms']:.1f} ms over {prof['nodes']} "
                    f"nodes; by layer type (ms): {parts}."]
    return "\n".join(out)


RESULT_FILES = ("engines", "decoder", "serve", "amg")  # <name>.json in a results folder (`write_rows`)


def main(folder: str) -> int:
    """Print the tables of a results folder; 2 when it is missing, 1 when it holds no results."""
    if not os.path.isdir(folder):
        print(f"report: got {folder!r}, expected a results folder (what `samrt bench ... --out` wrote)", file=sys.stderr)
        return 2
    printed = False
    for name, fn in (("engines", engines_table), ("decoder", decoder_table), ("serve", interactive_table),
                     ("serve", new_image_table), ("serve", serve_table), ("amg", amg_table)):
        text = fn(_load(os.path.join(folder, f"{name}.json")))
        if text:
            print(text + "\n")
            printed = True
    if not printed:
        print(f"report: no rows to tabulate in {folder} (looked for {', '.join(n + '.json' for n in RESULT_FILES)})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python -m samrt.benchmarks.report RESULTS_FOLDER\n"
              "prints the tables of the rows `samrt bench ... --out RESULTS_FOLDER` wrote", file=sys.stderr)
        sys.exit(0 if sys.argv[1:] in (["-h"], ["--help"]) else 2)
    sys.exit(main(sys.argv[1]))
