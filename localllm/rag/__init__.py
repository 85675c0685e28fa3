"""Your documents: chunking, the index, answers with their sources, and the ``rag``
commands. Internal: the public API is the ``localllm`` package."""
