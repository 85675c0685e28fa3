"""The core: one request type and its events, ``Model`` over a generator, the local
generator and its scheduler, the engine contract every runtime implements, embeddings
and process isolation. Internal: the public API is the ``localllm`` package."""
