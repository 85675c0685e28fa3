"""Constrained decoding: grammars for structured output, and tool calls built on them.
Internal: the public API is the ``localllm`` package."""
