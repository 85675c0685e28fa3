"""Model files: the formats localllm reads (GGUF, legacy GGML), the store and catalog,
discovery of models other tools keep, conversion, and the loader that plans and opens a
model. Internal: the public API is the ``localllm`` package."""
