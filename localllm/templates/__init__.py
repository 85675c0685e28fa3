"""Chat templates: rendering in a sandbox, the built-in templates, and the conformance
check of a model's own template. Internal: the public API is the ``localllm`` package."""
