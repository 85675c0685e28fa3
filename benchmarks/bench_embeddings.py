"""Embeddings and the vector index: localllm against each raw runtime, in the same run.

The embeddings / RAG acceptance goals; reps alternate localllm / raw, medians of ``--reps``.

1. **Embeddings/s**, one ``embed`` call over 1,000 seeded template sentences (5–40 words),
   the same ``--threads`` on both sides. Goal: localllm / raw ≥ 0.95, same vectors (lowest
   row cosine ≥ 0.9999). llama.cpp: ``load("all-minilm-l6-v2")`` vs llama-cpp-python's
   ``Llama.embed(normalize=True)`` on the same GGUF; both pack whole sequences into one
   ``llama_decode`` up to a token budget, and the raw side gets localllm's (n_ctx = n_batch
   = n_ubatch = 512) and flash attention on, as llama.cpp's "auto" (localllm's default)
   picks on a CPU (llama-cpp-python's default, off, is slower). onnxruntime int8:
   ``load("all-minilm-l6-v2-onnx-int8")`` vs its ``model.onnx`` through onnxruntime +
   ``tokenizers`` as a user writes it: batches of 32 in input order, padded to the batch's
   longest, masked mean pool, L2 norm.
2. **Search latency** at 100,000 vectors: an ``Index`` (default embedder) whose tables are
   filled directly with clustered synthetic unit vectors (2,000 gaussian centres + noise)
   rather than by embedding 100k texts. ``Index.search(vector, k=5)`` over 50 synthetic
   query vectors (noisy copies of stored ones), p50 / p95: goal p50 < 20 ms. Then over 50
   text queries (the first search, which loads the vector matrix, apart), split into query
   embedding and ranking (``Index._rank``), next to sqlite-vec's SQL KNN, for the record.
3. **Indexing throughput**: ``Index.add`` of ``tests/data/rag/docs`` into a fresh index,
   ``--reps`` times: documents, chunks and chunk tokens per second.

``--quick`` is a smoke test whose numbers mean nothing: 100 sentences, 5,000 vectors (under
``SQL_SEARCH_LIMIT``, so ``search`` ranks in SQL), one rep.

Usage: cd benchmarks && ../.venv/bin/python bench_embeddings.py [--quick] [--reps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from bench_batching import cpu_seconds
from results_file import write_result

import localllm
from localllm.rag.index import SQL_SEARCH_LIMIT, Index

DOCS = Path(__file__).resolve().parent.parent / "tests" / "data" / "rag" / "docs"
KNN_SQL = "SELECT rowid, distance FROM vectors WHERE embedding MATCH ? AND k = ?"
SUBJECTS = ("the old lighthouse keeper|a small team of engineers|my neighbour|the city council|"
            "every student in the class|a tired traveller|the local bakery|our project manager|"
            "the museum guide|two kids|the night nurse|a retired sailor|the new intern").split("|")
VERBS = ("repaired described ignored measured painted studied delivered forgot celebrated "
         "questioned borrowed photographed rebuilt sold").split()
OBJECTS = ("the broken bicycle|a long letter|the quarterly report|an unusual bird|the garden "
           "fence|a jar of honey|the train timetable|an old map|the kitchen window|a stack of "
           "invoices|the village bridge|a red kite").split("|")
EXTRAS = ("before the storm arrived|with great care|on a cold Tuesday morning|near the harbour|"
          "despite the heavy rain|for the third time this year|while everyone else was asleep|"
          "after a long discussion|without a word|in less than an hour|under the flickering "
          "street lamps|at the last minute").split("|")
JOINERS = [",", ", and", ", but", "because", "while", ", so", "although", "until"]
ASKS = ["how do I", "what is the best way to", "when should I", "why is it hard to",
        "what do I need to"]
TASKS = ("clean and oil a bicycle chain|feed a sourdough starter|keep bees alive in winter|get a "
         "refund for headphones|tie a bowline knot|start a compost heap|water a string of "
         "pearls plant|configure log rotation|visit the observatory at night|renew a library "
         "card").split("|")


def make_sentences(n: int, seed: int = 1234) -> list[str]:
    """``n`` varied English sentences of 5–40 words, the same for a given seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target, text = rng.randint(5, 40), ""
        while len(text.split()) < target:
            clause = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS),
                      *rng.sample(EXTRAS, rng.randint(0, 2))]
            text += f" {rng.choice(JOINERS)} " * bool(text) + " ".join(clause)
        text = " ".join(text.replace(" ,", ",").split()[:target]).rstrip(",")
        out.append(text[0].upper() + text[1:] + ".")
    return out


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def compare(name: str, ours: Callable[[], Any], raw: Callable[[], Any], n: int, reps: int
            ) -> dict[str, Any]:
    ours(), raw()  # warm both, then alternate
    mine, theirs = [], []
    for _ in range(reps):
        t, a = timed(ours)
        mine.append(n / t)
        t, b = timed(raw)
        theirs.append(n / t)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)  # lowest row cosine:
    cos = float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
    ours_s, raw_s = statistics.median(mine), statistics.median(theirs)
    print(f"  {name}: localllm {ours_s:.1f}/s, raw {raw_s:.1f}/s, ratio {ours_s / raw_s:.3f}, "
          f"min cosine {cos:.6f}", flush=True)
    return {"localllm_per_s": ours_s, "raw_per_s": raw_s, "ratio": ours_s / raw_s,
            "min_cosine": cos, "localllm_per_s_reps": mine, "raw_per_s_reps": theirs}


def bench_llamacpp(model: localllm.Model, sentences: list[str], threads: int, reps: int
                   ) -> dict[str, Any]:
    import llama_cpp

    run = int(getattr(model._engine, "_n_batch", 512))  # localllm's tokens per llama_decode
    llm = llama_cpp.Llama(model_path=str(model.info.path), embedding=True, n_ctx=run,
                          n_batch=run, n_ubatch=run, n_threads=threads,
                          n_threads_batch=threads, flash_attn=True, verbose=False)
    out = compare("llama.cpp", lambda: model.embed(sentences).vectors,
                  lambda: llm.embed(sentences, normalize=True), len(sentences), reps)
    llm.close()
    return {**out, "raw": f"llama-cpp-python {llama_cpp.__version__}", "n_batch": run}


def raw_onnx(session: Any, tokenizer: Any, sentences: list[str], batch: int = 32) -> Any:
    """What a user of onnxruntime + tokenizers writes: padded batches, mean pool, L2 norm."""
    inputs = {i.name for i in session.get_inputs()}
    out = []
    for start in range(0, len(sentences), batch):
        encoded = tokenizer.encode_batch(sentences[start:start + batch])
        lengths = np.array([len(e.ids) for e in encoded])
        width = int(lengths.max())
        ids = np.array([e.ids + [0] * (width - len(e.ids)) for e in encoded], dtype=np.int64)
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        states = session.run(None, feed)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(out)


def bench_onnx(sentences: list[str], threads: int, reps: int) -> dict[str, Any]:
    import onnxruntime as ort
    import tokenizers

    with localllm.load("all-minilm-l6-v2-onnx-int8", threads=threads) as model:
        path = Path(model.info.path)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = threads, 3
        session = ort.InferenceSession(str(path), sess_options=so,
                                       providers=["CPUExecutionProvider"])
        tokenizer = tokenizers.Tokenizer.from_file(str(path.parent / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        out = compare("onnxruntime int8", lambda: model.embed(sentences).vectors,
                      lambda: raw_onnx(session, tokenizer, sentences), len(sentences), reps)
    return {**out, "raw": f"onnxruntime {ort.__version__} + tokenizers {tokenizers.__version__}"}


def synthetic_vectors(n: int, dim: int, seed: int = 7, centres: int = 2000) -> Any:
    """Unit vectors around ``centres`` random unit centres (clusters, as real text has)."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, dim)).astype(np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * np.float32(0.03)
    vectors = middle[rng.integers(0, centres, n)] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bulk_insert(index: Index, vectors: Any) -> None:
    """Rows straight into the index's tables, as ``Index._write`` lays them out."""
    db = index._db
    db.execute("BEGIN IMMEDIATE")  # one transaction; a failure leaves it to the temp dir
    doc = db.execute("INSERT INTO documents (source, sha256, chunks) VALUES (?, ?, ?)",
                     ("synthetic://vectors", "0" * 64, len(vectors))).lastrowid
    first = int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM chunks").fetchone()[0])
    ids = range(first, first + len(vectors))
    db.executemany("INSERT INTO chunks (id, doc_id, text, line_start, line_end, page) "
                   "VALUES (?, ?, ?, 1, 1, NULL)", ((i, doc, f"synthetic chunk {i}") for i in ids))
    db.executemany("INSERT INTO vectors (rowid, embedding) VALUES (?, ?)",
                   zip(ids, (v.tobytes() for v in vectors), strict=True))
    index._bump()
    db.execute("COMMIT")


def bench_search(model: localllm.Model, n_vectors: int, reps: int) -> dict[str, Any]:
    queries = [f"{ask} {task}?" for task in TASKS for ask in ASKS]
    ms: dict[str, list[float]] = {k: [] for k in ("search", "embed", "rank", "matrix", "sql")}
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp, \
            Index(Path(tmp) / "index.sqlite", embedder=model) as index:
        vectors = synthetic_vectors(n_vectors, model.embed("x").dim)
        insert_s, _ = timed(bulk_insert, index, vectors)
        print(f"  {n_vectors} vectors inserted in {insert_s:.1f} s", flush=True)
        first_s, _ = timed(index.search, queries[0], 5)
        qvecs = model.embed(queries).vectors
        steps: dict[str, Callable[[str, Any], Any]] = {
            "search": lambda q, v: index.search(q, k=5),
            "embed": lambda q, v: model.embed(q, overflow="truncate_right"),
            "rank": lambda q, v: index._rank(v, 5),
            "matrix": lambda q, v: index._rank(v, 5, force_matrix=True),
            "sql": lambda q, v: index._db.execute(KNN_SQL, (v.tobytes(), 5)).fetchall()}
        agree, top = 0, set()
        for _ in range(reps):
            for query, vector in zip(queries, qvecs, strict=True):
                for key, fn in steps.items():
                    t, value = timed(fn, query, vector)
                    ms[key].append(t * 1000)
                    if key == "matrix":
                        top = {cid for cid, _ in value}
                    elif key == "sql":
                        agree += {int(r[0]) for r in value} == top
        # the gate: vector search, as the goal's synthetic queries are vectors (noisy copies
        # of stored ones), without the query embedding that text search adds
        rng = np.random.default_rng(11)
        probes = vectors[rng.integers(0, n_vectors, len(queries))] + rng.standard_normal(
            (len(queries), vectors.shape[1])).astype(np.float32) * np.float32(0.03)
        ms["vector"] = []
        for _ in range(reps):
            for probe in probes:
                t, _ = timed(index.search, probe, 5)
                ms["vector"].append(t * 1000)
        stats = {k: dict(zip(("p50_ms", "p95_ms"), map(float, np.percentile(v, [50, 95])),
                             strict=True)) for k, v in ms.items()}
    return {"vectors": n_vectors, "queries": len(queries), "insert_s": insert_s,
            "first_search_ms": first_s * 1000, "ms": stats, "reps": reps,
            "rank_path": "matrix" if n_vectors > SQL_SEARCH_LIMIT else "sql",
            "sql_matches_matrix_top5": agree / len(ms["sql"])}


def bench_indexing(model: localllm.Model, docs: list[Path], reps: int) -> dict[str, Any]:
    seconds, chunks, tokens = [], 0, 0
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp, \
                Index(Path(tmp) / "index.sqlite", embedder=model) as index:
            t, report = timed(index.add, docs)
            seconds.append(t)
            chunks = report.chunks
            texts = [r[0] for r in index._db.execute("SELECT text FROM chunks").fetchall()]
            tokens = sum(len(model.tokenizer.encode(text)) for text in texts)
    s = statistics.median(seconds)
    print(f"  {len(docs)} documents, {chunks} chunks, {tokens} tokens: {s:.2f} s", flush=True)
    return {"docs": len(docs), "chunks": chunks, "tokens": tokens, "seconds_reps": seconds,
            "docs_per_s": len(docs) / s, "chunks_per_s": chunks / s, "tokens_per_s": tokens / s}


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    return {"node": platform.node(), "cpu": model, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def table(r: dict[str, Any]) -> str:
    rows = []
    for key, label in (("llamacpp", "llama.cpp f16"), ("onnx", "onnxruntime int8")):
        e = r["embeddings"][key]
        rows += [f"| embed {label}: localllm vs {e['raw']} | {e['localllm_per_s']:.1f} vs "
                 f"{e['raw_per_s']:.1f} emb/s = {e['ratio']:.3f}× | "
                 f"≥ 0.95× {mark(e['ratio'] >= 0.95)} |",
                 f"| embed {label}: lowest cosine localllm vs raw | {e['min_cosine']:.6f} | "
                 f"≥ 0.9999 {mark(e['min_cosine'] >= 0.9999)} |"]
    s, n = r["search"], f"{r['search']['vectors']:,}"
    for key, label in (("vector", f"Index.search(vector) k=5, {n} vectors"),
                       ("search", f"Index.search(text) k=5, {n} vectors"),
                       ("embed", "  of which query embedding"),
                       ("rank", f"  of which ranking `_rank` ({s['rank_path']})"),
                       ("matrix", "ranking, numpy matrix (force_matrix)"),
                       ("sql", "ranking, sqlite-vec SQL KNN")):
        m = s["ms"][key]
        goal = f"p50 < 20 ms {mark(m['p50_ms'] < 20)}" * (key == "vector")
        rows.append(f"| {label}: p50 / p95 | {m['p50_ms']:.2f} / {m['p95_ms']:.2f} ms | {goal} |")
    how = "loads the matrix" if s["rank_path"] == "matrix" else "SQL path, no matrix"
    rows += [f"| first search ({how}) | {s['first_search_ms']:.1f} ms | |",
             f"| SQL KNN top-5 = matrix top-5 | {s['sql_matches_matrix_top5']:.0%} of queries | |",
             f"| bulk insert of {n} synthetic vectors | {s['insert_s']:.1f} s | |"]
    i = r["indexing"]
    rows.append(f"| indexing {i['docs']} docs ({i['chunks']} chunks, {i['tokens']} tokens) | "
                f"{i['docs_per_s']:.2f} docs/s, {i['chunks_per_s']:.1f} chunks/s, "
                f"{i['tokens_per_s']:.0f} tokens/s | |")
    return "| measure | result | goal |\n|---|---|---|\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 sentences, 5,000 vectors, 1 rep")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    opts = ap.parse_args()
    if opts.reps < 1 or opts.threads < 1:
        ap.error("--reps and --threads must be at least 1")
    reps = 1 if opts.quick else opts.reps
    n_sentences, n_vectors = (100, 5_000) if opts.quick else (1_000, 100_000)
    os.environ["RAYON_NUM_THREADS"] = str(opts.threads)  # tokenizers' encode_batch pool
    sentences = make_sentences(n_sentences)
    cpu0 = cpu_seconds()
    result: dict[str, Any] = {"date": date.today().isoformat(), "machine": machine(),
                              "threads": opts.threads, "quick": opts.quick, "reps": reps,
                              "sentences": n_sentences, "sentence_words_mean":
                              statistics.mean(len(s.split()) for s in sentences)}
    print(f"== embeddings of {n_sentences} sentences, {opts.threads} threads", flush=True)
    with localllm.load("all-minilm-l6-v2", threads=opts.threads) as model:
        result["model"] = str(model.info.path)
        result["embeddings"] = {
            "llamacpp": bench_llamacpp(model, sentences, opts.threads, reps),
            "onnx": bench_onnx(sentences, opts.threads, reps)}
        print(f"== search at {n_vectors:,} vectors", flush=True)
        result["search"] = bench_search(model, n_vectors, reps)
        print(f"== indexing {DOCS.relative_to(DOCS.parents[3])}", flush=True)
        result["indexing"] = bench_indexing(model, sorted(DOCS.iterdir()), reps)
    cpu1 = cpu_seconds()
    result["other_cpu_busy"] = ((cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2])) / (
        (cpu1[0] - cpu0[0]) * (os.cpu_count() or 1))
    write_result("embeddings", result)
    print("\n" + table(result))
    busy = result["other_cpu_busy"]
    print(f"\n{result['machine']['cpu']}, threads={opts.threads}, medians of {reps} rep(s); CPUs "
          f"busy with other work: {busy:.0%}" + " (numbers are noisy)" * (busy > 0.1))


if __name__ == "__main__":
    main()
