"""What every pool child needs, loaded once in the worker's main process before the pool forks.

The prefork pool forks its children from the main process, at start, whenever the autoscaler
grows the pool and whenever a child is recycled (`max_tasks_per_child`, memory, a hard-limit
kill). Whatever the main process loaded before is then shared copy-on-write: tiktoken's BPE
ranks, the Gemini SDK's modules (google-genai builds hundreds of pydantic models at import),
the pipeline's modules, the persona, the settings. Loaded in each child instead, they cost
every child ~90 MB of its own and a few seconds of CPU, inside its first prompt's time limit.

What must not cross a fork is still made in each child, after it (`workers/runtime.py`,
built on the child's first task): Redis connections, the SDK client with its HTTP connection
pool. Here the SDK client is only built once and dropped, never used, so that its own lazy
imports (the HTTP stack, the TLS trust store) happen here and not in every child; building it
also builds the one TLS context every child's google-genai client shares
(`workers.llm_genai.shared_tls_args`).

Two lazy builds found by profiling a child (docs/performance.md, "Memory per slot"):
- google-genai defers building its pydantic models to their first use (`defer_build`): the
  models a streamed reply and an embedding use are built here, once;
- billiard (Celery's pool) sets each new child's parent-death signal through cffi when cffi
  is installed (cryptography brings it), and cffi builds its C parser once per process:
  building it here saves each child ~5 MB.

Last, `gc.freeze()` moves everything loaded so far out of the collector's reach: a child's
garbage collection would otherwise write to the header of every shared object it visits and
so copy the pages they sit on (the Python docs' advice for fork without exec).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import time
from dataclasses import dataclass

from context.terms import warm_up as warm_up_terms
from context.tokens import count_tokens
from core.settings import Settings
from workers.runtime import build_llm, persona_text

logger = logging.getLogger(__name__)

# Imported for their side effect: the modules a child's first prompt or summary would import.
PIPELINE_MODULES = ("context.builder", "context.summary", "context.vectors", "workers.pipeline",
                    "workers.summary", "workers.embeddings")
# google-genai models built on the first streamed reply and the first embedding (measured with
# google-genai 3.3; a name the SDK no longer has is skipped, a new one is built in the child).
GENAI_MODELS = ("GenerateContentConfig", "_GenerateContentParameters", "GenerateContentResponse",
                "Candidate", "Content", "UserContent", "Part", "HttpResponse",
                "AutomaticFunctionCallingConfig", "EmbedContentConfig",
                "_EmbedContentParametersPrivate", "EmbedContentResponse", "ContentEmbedding")


@dataclass(frozen=True)
class Preloaded:
    seconds: float
    frozen_objects: int


def preload(settings: Settings) -> Preloaded:
    """Load what children share; call once, in the main process, before the pool starts."""
    started = time.monotonic()
    for name in PIPELINE_MODULES:
        importlib.import_module(name)
    count_tokens("warm up")  # tiktoken's ranks: the largest shared piece
    warm_up_terms()  # Sudachi's dictionary and the stemmer: recall's analysers
    persona_text(settings.persona_file)
    warm_llm_imports(settings)
    if settings.gemini_sdk == "genai":
        build_genai_models()
    warm_pdeathsig()
    gc.collect()
    gc.freeze()
    done = Preloaded(seconds=time.monotonic() - started, frozen_objects=gc.get_freeze_count())
    logger.info("preloaded for the pool in %.2f s (%s SDK, %d objects frozen)", done.seconds,
                settings.gemini_sdk, done.frozen_objects)
    return done


def warm_llm_imports(settings: Settings) -> None:
    """Build the SDK client once and drop it unused: no connection is opened (both SDKs
    connect on the first request), but every module it needs is imported here."""
    client = build_llm(settings)
    del client


def build_genai_models() -> int:
    from google.genai import types

    built = 0
    for name in GENAI_MODELS:
        model = getattr(types, name, None)
        if model is not None:
            model.model_rebuild(raise_errors=False)
            built += 1
    return built


def warm_pdeathsig() -> None:
    """Read (not set) this process's parent-death signal the way billiard sets a child's."""
    from billiard.util import get_pdeathsig

    with contextlib.suppress(OSError):  # not Linux: billiard does not set it either
        get_pdeathsig()
