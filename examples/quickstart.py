"""Quickstart: load the embedded default model and stream a chat answer.

Run with `make demo` (sets everything up) or `.venv/bin/python examples/quickstart.py`.
"""

import sys

import localllm

QUESTION = "Name the capital of France and say one thing it is famous for."


def main() -> None:
    question = " ".join(sys.argv[1:]) or QUESTION
    with localllm.load() as model:  # the default model, fetched into the store if needed
        info = model.info
        print(f"{info.name} · {info.quantization} · {info.backend} {info.backend_version} · "
              f"{info.threads} threads · context {info.context_length}\n")
        print(f"> {question}")
        final = None
        for chunk in model.stream_chat([{"role": "user", "content": question}],
                                       max_tokens=200, temperature=0.2, seed=1):
            print(chunk.text, end="", flush=True)
            final = chunk.completion or final
        assert final is not None
        t = final.timings
        print(f"\n\n[{final.usage.completion_tokens} tokens, finish: {final.finish_reason}, "
              f"first token after {t.time_to_first_token_s:.2f} s, "
              f"{t.generation_tokens_per_s:.0f} tokens/s, model load {t.load_s:.2f} s]")


if __name__ == "__main__":
    main()
