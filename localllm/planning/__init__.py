"""Planning before loading: memory and speed estimates, placement, and the
recommendations built on them. Internal: the public API is the ``localllm`` package."""
