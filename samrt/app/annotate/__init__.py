"""samrt.app.annotate: SAM's data engine in a browser (`samrt annotate`).

Stage 1 (assisted-manual): clicks and boxes answered by `sam_decode` from a precomputed
embedding, three candidates, refinement with the previous logits, accept, next. Stage 2
(semi-automatic): `sam_amg` proposals to keep or reject, then what is missing by hand.
Output: one SA-1B style JSON per image (COCO RLE), a COCO instances file on demand, and the
data engine's figures (seconds per mask, masks per image).

Part of the "app" floor (`samrt.layers`); it needs aiohttp (the annotate extra) at import, so the
CLI imports it inside `samrt annotate` only.
"""

from .app import create_app
from .folder import ImageFolder
from .launch import run_annotate, start_model_server
from .service import AnnotationService
from .store import AnnotationStore

__all__ = ["create_app", "run_annotate", "start_model_server", "AnnotationService", "AnnotationStore", "ImageFolder"]
