"""Pick a backend explicitly, see what it can do, and see a refusal explained.

Run: .venv/bin/python examples/choose_backend.py
"""

import localllm


def main() -> None:
    print("registered backends:", ", ".join(localllm.backend_names()))
    with localllm.load(backend="llama.cpp", context_length=512, threads=2) as model:
        caps = model.capabilities
        print(f"llama.cpp: logits={caps.logits}, sampling={sorted(caps.sampling_params)}")
        print(model.complete("The capital of France is", max_tokens=8, temperature=0).text)
    try:
        localllm.load(backend="ctransformers", context_length=512)
    except localllm.UnsupportedModelError as exc:
        print(f"ctransformers refused, with the reason: {exc}")


if __name__ == "__main__":
    main()
