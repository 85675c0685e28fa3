"""The draft model of speculative decoding: found, checked against the target and opened
beside it.

A draft is useful only when its token ids mean the same text as the target's: the
target checks the draft's ids one for one. So the vocabularies are compared in full from
the two files' headers before anything loads (two SmolLM2 sizes share one; a Gemma
draft for a SmolLM2 target does not), and a mismatch is a DraftModelError that names the
first token that differs. The draft gets the target's context, sequences and threads, so
every sequence the target decodes has a twin in the draft's KV cache.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .._errors import DraftModelError
from ..core.engine import EngineOptions
from .gguf import ModelFile

if TYPE_CHECKING:
    from ..core.speculation import DraftModel
    from ..planning.planner import LoadPlan
    from .loader import Resolved
    from .store import ModelStore

#: header keys that must agree besides the token list: the ids a template and the
#: end-of-generation check read
_SAME_IDS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")


def check_vocabulary(target: ModelFile, draft: ModelFile) -> None:
    """Refuse a draft whose token ids mean other text than the target's."""
    theirs = draft.metadata.get("tokenizer.ggml.tokens")
    ours = target.metadata.get("tokenizer.ggml.tokens")
    if not ours or not theirs:
        raise DraftModelError(f"{'the target' if not ours else 'the draft'} model's header "
                              "lists no vocabulary (tokenizer.ggml.tokens), so the two "
                              "cannot be checked to share one; use GGUF files for both")
    if len(ours) != len(theirs):
        raise DraftModelError(
            f"the draft model {draft.name!r} has {len(theirs)} tokens and {target.name!r} "
            f"has {len(ours)}: a draft must share the target's vocabulary; pick a smaller "
            "model of the same family (or speculative='ngram', which needs none)")
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            raise DraftModelError(
                f"the draft model {draft.name!r} has token {i} = {str(b)!r} where "
                f"{target.name!r} has {str(a)!r}: the vocabularies differ; pick a smaller "
                "model of the same family")
    for key in _SAME_IDS:
        if target.metadata.get(key) != draft.metadata.get(key):
            raise DraftModelError(
                f"the draft model's {key} is {draft.metadata.get(key)} and the target's is "
                f"{target.metadata.get(key)}; a draft must end and begin text as the target")


def open_draft(source: str | os.PathLike[str], target: Resolved, the_plan: LoadPlan, *,
               isolated: bool, store: ModelStore | None = None) -> DraftModel:
    """Resolve, check and open the draft model for ``target`` loaded as ``the_plan``."""
    from ..core.isolation import open_isolated
    from ..core.speculation import DraftModel
    from .loader import plan_resolved, resolve

    resolved = resolve(source, "auto", store)
    if not resolved.engine_cls.batching:
        raise DraftModelError(f"the draft model {resolved.path.name} runs on "
                              f"{resolved.engine_cls.backend_name}, which decodes one "
                              "sequence at a time; a draft needs llama.cpp (a GGUF file)")
    check_vocabulary(target.gguf, resolved.gguf)
    share = resolved.gguf.file_size / max(1, target.gguf.file_size)
    if share > 1 / 3:
        # each drafted token costs a draft step: a draft that is not several times cheaper
        # than the target slows decoding even when all its guesses are right
        logging.getLogger("localllm").warning(
            "the draft model %s is %.0f%% of %s's size; a draft pays off when it is several "
            "times cheaper per token (see Completion.timings and docs/concurrency.md)",
            resolved.path.name, share * 100, target.path.name)
    plan = plan_resolved(resolved, context_length=the_plan.context_length,
                         threads=the_plan.threads, batch_size=the_plan.batch_size,
                         parallel=the_plan.parallel, kv_type=the_plan.kv_type,
                         device="gpu" if the_plan.gpu_layers else "cpu",
                         gpu_layers=None if the_plan.gpu_layers else 0)
    options = EngineOptions(context_length=plan.context_length, threads=plan.threads,
                            batch_size=plan.batch_size, gpu_layers=plan.gpu_layers,
                            kv_type=plan.kv_type, parallel=plan.parallel)
    engine: Any = open_isolated(resolved.engine_cls, resolved.gguf, options) if isolated \
        else resolved.engine_cls.open(resolved.gguf, options)
    if engine.max_sequences < the_plan.parallel:
        engine.close()
        raise DraftModelError(f"the draft model opened with {engine.max_sequences} "
                              f"sequences where the target has {the_plan.parallel}")
    return DraftModel(engine, resolved.gguf.name or resolved.path.name)
