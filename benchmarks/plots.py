"""PNG plots from benchmark rows (matplotlib, Agg)."""

from __future__ import annotations

import os
from typing import List

__all__ = ["plot_all"]


def plot_all(rows: List[dict], out_dir: str) -> List[str]:
    import matplotlib  # matplotlib: the dev extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: the dev extra

    written = []
    enc = [r for r in rows if r.get("bench") == "engines" and r.get("stage") == "encoder" and "p50_ms" in r]
    if enc:
        fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(enc)), 3.5))
        labels = [f"{r['backend']}\n{r['precision']}" for r in enc]
        ax.bar(labels, [r["p50_ms"] for r in enc], color="#4C72B0")
        ax.set_ylabel("encoder p50 (ms)")
        cpu = (enc[0].get("machine") or {}).get("cpu", "")
        ax.set_title(f"Encoder ablation ladder ({enc[0]['model']}, {cpu[:40]})", fontsize=9)
        fig.tight_layout()
        written.append(os.path.join(out_dir, "encoder_ladder.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    dec = [r for r in rows if r.get("bench") == "engines" and r.get("stage") == "decoder"]
    if dec:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for (backend, prec, n) in sorted({(r["backend"], r["precision"], r["num_points"]) for r in dec if "p50_ms" in r}):
            pts = sorted((r["num_prompts"], r["p50_ms"]) for r in dec if "p50_ms" in r and r["backend"] == backend
                         and r["precision"] == prec and r["num_points"] == n)
            ax.plot(*zip(*pts), marker="o", label=f"{backend} {prec}, {n} point(s)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompts per decoder call (P)")
        ax.set_ylabel("decoder p50 (ms)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(os.path.join(out_dir, "decoder_vs_prompts.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    srv = [r for r in rows if r.get("bench") == "serve" and r.get("click_to_mask")]
    if srv:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        keys = sorted({(r["dynamic_batching"], r["protocol"], r["shared_memory"]) for r in srv})
        for k in keys:
            pts = sorted((r["concurrency"], r["click_to_mask"]["p50_ms"]) for r in srv
                         if (r["dynamic_batching"], r["protocol"], r["shared_memory"]) == k)
            ax.plot(*zip(*pts), marker="o", label=f"batching {k[0]}, {k[1]}{' +shm' if k[2] else ''}")
        ax.axhline(50, color="red", ls="--", lw=1, label="50 ms budget")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("click-to-mask p50 (ms)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(os.path.join(out_dir, "click_latency_vs_concurrency.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
