"""The same prompt through every installed backend that can read the default model.

Run: .venv/bin/python examples/every_backend.py
"""

import localllm

OPTIONS = {"gpt4all": {"compat_copy": True}}


def main() -> None:
    prompt = "The capital of France is"
    for name in localllm.backend_names():
        if name == "fake":
            continue
        try:
            with localllm.load(backend=name, context_length=512,
                               backend_options=OPTIONS.get(name)) as model:
                result = model.complete(prompt, max_tokens=10, temperature=0)
                print(f"{name:<14} {result.text!r}  "
                      f"({result.timings.generation_tokens_per_s:.0f} tokens/s)")
        except (localllm.UnsupportedModelError, localllm.BackendUnavailableError) as exc:
            print(f"{name:<14} cannot run it: {exc}")


if __name__ == "__main__":
    main()
