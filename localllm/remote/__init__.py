"""Other servers as models: the HTTP transport and the remote generator under ``Model``.
Internal: the public API is the ``localllm`` package."""
