"""Coverage-guided fuzzing of what localllm reads from untrusted files.

Model files and chat templates come from downloads: the GGUF, GGML/ggjt and ONNX-folder
readers and the template renderer must refuse any input with a typed error, quickly,
before a native runtime sees it. ``python -m localllm.support.fuzz TARGET --seconds N`` runs one
target under atheris (``targets`` holds them; ``samples`` builds the seed files).
"""
