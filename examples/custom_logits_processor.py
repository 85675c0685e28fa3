"""A custom logits processor: forbid a word, then watch the model route around it.

Run: .venv/bin/python examples/custom_logits_processor.py
"""

import numpy as np

import localllm


def main() -> None:
    with localllm.load(context_length=512) as model:
        plain = model.complete("The capital of France is", max_tokens=8, temperature=0)
        banned = model.tokenizer.encode(" Paris", add_special=False)[0]

        def no_paris(input_ids, logits):  # must not modify its input
            out = logits.copy()
            out[banned] = -np.inf
            return out

        steered = model.complete("The capital of France is", max_tokens=8, temperature=0,
                                 logits_processors=[no_paris])
    print("plain:  ", repr(plain.text))
    print("steered:", repr(steered.text))


if __name__ == "__main__":
    main()
