"""What samrt writes to disk and how it finds it again: output folders, export manifests, engine
file names, the embedded checkpoint. Torch-free (numpy only), so the server, the engines, the
client and the orchestration (`samrt.app.pipeline`) all read artifacts the same way.

Output folders carry a marker file, `.samrt`, that says which samrt command made them. samrt
writes into a folder only when it is new, empty, or marked by samrt; it replaces (deletes) only
what its marker says samrt wrote there. Anything else is refused with `OutputDirError`, and the
folder is left untouched: `samrt build-repo --out .` cannot wipe a working directory.

Files samrt rewrites while a reader may look (markers, per-image JSON, state files) are written
atomically (`atomic_write_json`): a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .amg import AmgOptions
from .errors import SamrtError
from .spec import SamConfig

__all__ = [
    "MARKER",
    "OutputDirError",
    "ArtifactError",
    "atomic_write_text",
    "atomic_write_json",
    "check_output_dir",
    "prepare_output_dir",
    "read_marker",
    "record_entries",
    "replace_recorded_entries",
    "served_model_card",
    "check_new_or_own_file",
    "ExportManifest",
    "EXPORT_REPORT",
    "engine_path",
    "default_checkpoint",
]

MARKER = ".samrt"
EXPORT_REPORT = "export_report.json"


class OutputDirError(SamrtError):
    """An output folder holds files samrt did not write; nothing in it was touched."""


class ArtifactError(SamrtError):
    """An artifact samrt expects (an export folder, an engine and its report) is missing or not valid."""


# -- atomic writes ----------------------------------------------------------------------------
def atomic_write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically: into a new temporary file beside it
    (`.<name>.<random>.tmp`, mode from the umask like any new file), flushed to disk, then renamed
    over `path` (`os.replace`, atomic within a file system). On any error the temporary file is
    removed and `path` is left as it was."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    f = open(tmp, "x", encoding="utf-8")  # "x": a new name of our own, never someone's file
    try:
        with f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)  # ours: created by the open above
        raise


def atomic_write_json(path: str, doc, **dump_kwargs) -> None:
    """`json.dumps(doc, **dump_kwargs)` written to `path` atomically (atomic_write_text). `doc` is
    serialised before any file is touched: a value JSON cannot hold (TypeError, ValueError) leaves
    no file behind."""
    atomic_write_text(path, json.dumps(doc, **dump_kwargs))


# -- output folders ---------------------------------------------------------------------------
def read_marker(path: str) -> Optional[dict]:
    """The marker of a folder samrt made ({"kind": ..., "entries": [...]}), or None."""
    try:
        with open(os.path.join(path, MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "kind" in marker else None


def _write_marker(path: str, marker: dict) -> None:
    atomic_write_json(os.path.join(path, MARKER), marker, indent=1)


def _output_dir_state(path: str, kind: str, accept: Sequence[str]) -> Tuple[str, Optional[dict]]:
    """("new", None), ("marked", marker) or ("unmarked export", None); OutputDirError otherwise."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"{path}: got a file, expected a folder for the output of samrt {kind}")
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    if not entries:
        return "new", None
    marker = read_marker(path)
    if marker is not None:
        if marker["kind"] == kind or marker["kind"] in accept:
            return "marked", marker
        raise OutputDirError(f"{path}: holds the output of samrt {marker['kind']}, expected a new or empty folder "
                             f"or one written by samrt {kind}; nothing was changed")
    if "export" in (kind,) + tuple(accept) and _is_unmarked_export(path):
        return "unmarked export", None
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise OutputDirError(f"{path}: not empty ({len(entries)} {'entry' if len(entries) == 1 else 'entries'}: {shown}) and not written by samrt "
                         f"(no {MARKER} marker); expected a new or empty folder for samrt {kind}. "
                         "Nothing in it was changed; choose another folder")


def check_output_dir(path: str, kind: str, accept: Sequence[str] = ()) -> Optional[dict]:
    """What prepare_output_dir(path, kind, accept) would decide, changing nothing (a plan, a dry run).

    Returns the folder's marker when samrt wrote it as output of `kind` (or of one of `accept`);
    None when the folder is missing or empty, or is an export folder written before markers
    existed (prepare_output_dir would create or mark it). Raises OutputDirError in the cases
    prepare_output_dir raises it."""
    return _output_dir_state(os.path.abspath(path), kind, accept)[1]


def prepare_output_dir(path: str, kind: str, accept: Sequence[str] = (), details: Optional[dict] = None) -> str:
    """Make `path` ready for samrt to write into, as output of the command `kind`; returns it absolute.

    A missing or empty folder is created and marked (with `details`, e.g. the options a job ran
    with, added to its new marker); a folder marked by samrt with `kind` (or one of `accept`, e.g.
    engines built into an export folder) is used as it is, marker unchanged. A non-empty folder
    without the marker, or marked for another kind, raises OutputDirError naming it and some of
    its entries; nothing in it is changed.
    """
    path = os.path.abspath(path)
    state, _ = _output_dir_state(path, kind, accept)
    if state == "marked":
        return path
    if state == "unmarked export":
        # An export folder written before markers existed: its report says samrt wrote it.
        _write_marker(path, {"kind": "export", "entries": [], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "adopted": "export_report.json written by samrt export"})
        return path
    os.makedirs(path, exist_ok=True)
    _write_marker(path, {**(details or {}), "kind": kind, "entries": [], "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return path


def _is_unmarked_export(path: str) -> bool:
    try:
        ExportManifest.read(path, require_passed=False)
        return True
    except ArtifactError:
        return False


def record_entries(path: str, names: Iterable[str]) -> None:
    """Add `names` (entries directly inside `path`) to the marker: samrt wrote them."""
    marker = read_marker(path)
    if marker is None:
        raise OutputDirError(f"{path}: no {MARKER} marker; prepare_output_dir first")
    marker["entries"] = sorted(set(marker.get("entries", [])) | set(names))
    _write_marker(path, marker)


def replace_recorded_entries(path: str, kind: str) -> List[str]:
    """Prepare `path` for `kind` and delete the entries samrt recorded there before (a re-render).

    Only recorded entries are deleted; anything else in the folder is left as it is."""
    prepare_output_dir(path, kind)
    marker = read_marker(path) or {}
    removed = []
    for name in marker.get("entries", []):
        target = os.path.join(path, name)
        if os.path.dirname(os.path.normpath(target)) != os.path.normpath(path):
            continue  # a marker never names anything outside its folder
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
        removed.append(name)
    marker["entries"] = []
    _write_marker(path, marker)
    return removed


def check_new_or_own_file(path: str, companions: Sequence[str], what: str) -> None:
    """Refuse to overwrite a file that samrt did not write: an existing `path` is accepted only
    when one of `path + suffix` for `companions` (files samrt writes beside it) exists too."""
    if os.path.lexists(path) and not any(os.path.exists(path + c) for c in companions):
        raise OutputDirError(f"{path}: exists and was not written by samrt {what} (no "
                             f"{' or '.join(os.path.basename(path) + c for c in companions)} beside it); "
                             "it was left unchanged; choose another output path")


# -- export folders ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportManifest:
    """An export folder's `export_report.json`, read once: what `samrt export` wrote and checked."""

    export_dir: str
    config: SamConfig
    name: str
    encoder_path: str
    decoder_path: str
    checkpoint: Optional[str]
    random_init: bool
    passed: bool
    report: dict
    # the fast decoder's graphs ("image_prep", "fast_decoder", "fast_decoder_mask") -> path;
    # empty for an export written before samrt exported them
    fast_decoder_paths: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, export_dir: str, require_passed: bool = True) -> "ExportManifest":
        """Raises ArtifactError when the folder has no report, or (by default) its check failed."""
        path = os.path.join(export_dir, EXPORT_REPORT)
        try:
            with open(path) as f:
                report = json.load(f)
            cfg = SamConfig.from_dict(report["config"])
            enc, dec = report["encoder"]["path"], report["decoder"]["path"]
            fast = dict(report.get("fast_decoder", {}).get("paths", {}))
        except OSError:
            raise ArtifactError(f"{export_dir}: no {EXPORT_REPORT}; expected a folder written by `samrt export`") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{path}: not an export report written by samrt ({type(e).__name__}: {e})") from None
        manifest = cls(export_dir=export_dir, config=cfg, name=report.get("name", cfg.model_type),
                       encoder_path=os.path.join(export_dir, enc), decoder_path=os.path.join(export_dir, dec),
                       checkpoint=report.get("checkpoint"), random_init=bool(report.get("random_init")),
                       passed=bool(report.get("passed")), report=report,
                       fast_decoder_paths={g: os.path.join(export_dir, f) for g, f in fast.items()})
        if require_passed and not manifest.passed:
            raise ArtifactError(f"{path}: the export did not pass its check against PyTorch; not using it")
        return manifest

    def graph_path(self, graph: str) -> str:
        """The exported ONNX file of `graph` (encoder, decoder, image_prep, fast_decoder,
        fast_decoder_mask); ArtifactError when this export has none."""
        paths = {"encoder": self.encoder_path, "decoder": self.decoder_path, **self.fast_decoder_paths}
        if graph not in paths:
            raise ArtifactError(f"{self.export_dir}: no {graph} graph (exported by an older samrt: export again); "
                                f"it has {sorted(paths)}")
        return paths[graph]

    def describe(self) -> str:
        source = "RANDOM-INIT, masks mean nothing" if self.random_init else self.checkpoint
        return f"{self.name} ({source})"

    def served_model(self) -> dict:
        """What the server tells clients about the model it serves (`samrt.client`'s model_info):
        {"model": a name, "amg_options": the checkpoint's recommended automatic-mask options or
        None} (`served_model_card`)."""
        card = served_model_card(self.checkpoint) if self.checkpoint else None
        name = (card or {}).get("model") or (os.path.splitext(os.path.basename(self.checkpoint))[0]
                                            if self.checkpoint else f"{self.name} (random init)")
        return {"model": name, "amg_options": (card or {}).get("amg_options")}


# Beside a checkpoint `name.pth`, `name.amg.json` may say which automatic-mask options suit it:
# {"model": name, "amg_options": {AmgOptions fields}, "why": text}. SAM's defaults (predicted IoU
# 0.88, stability 0.95) suit the released ViT-H; the embedded model carries lower ones.
AMG_CARD_SUFFIX = ".amg.json"


def served_model_card(checkpoint: str) -> Optional[dict]:
    """The checkpoint's `.amg.json` card (None when there is none); ArtifactError when it is not
    one (options outside `samrt.amg.AmgOptions`)."""
    path = os.path.splitext(checkpoint)[0] + AMG_CARD_SUFFIX
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            card = json.load(f)
        AmgOptions.from_fields(dict(card.get("amg_options") or {}))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path}: not a model card of automatic-mask options ({type(e).__name__}: {e})") from None
    return card


def engine_path(onnx_path: str, out_dir: str, backend: str, precision: str) -> str:
    """An engine's file name carries its settings: vit_b.encoder.onnx -> out/vit_b.encoder.int8.onnx
    (onnxruntime; fp32 is the optimised graph, .opt.onnx), out/vit_b.encoder.fp16.plan (tensorrt),
    out/vit_b.encoder.bf16.xml (openvino)."""
    stem = os.path.basename(onnx_path)[: -len(".onnx")]
    tag = "opt" if precision == "fp32" and backend == "onnxruntime" else precision
    suffix = {"tensorrt": "plan", "openvino": "xml"}.get(backend, "onnx")
    return os.path.join(out_dir, f"{stem}.{tag}.{suffix}")


def default_checkpoint() -> Optional[str]:
    """The embedded default: the small SAM trained by samrt, shipped inside the package (or None)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "sam_samrt_small.pth")
    return path if os.path.isfile(path) else None
