"""A streaming multi-turn chat in the terminal; old turns are dropped when the context
fills (and the drop is reported), never silently truncated.

Run: .venv/bin/python examples/chat_repl.py   (empty line to quit)
"""

import sys

import localllm


def main() -> None:
    messages = [{"role": "system", "content": "You are a concise assistant."}]
    with localllm.load(context_length=2048) as model:
        for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("> "), ""):
            line = line.strip()
            if not line:
                break
            messages.append({"role": "user", "content": line})
            parts = []
            for chunk in model.stream_chat(messages, overflow="drop_oldest", max_tokens=128,
                                           temperature=0.3, seed=1):
                print(chunk.text, end="", flush=True)
                parts.append(chunk.text)
                if chunk.completion and chunk.completion.truncation:
                    dropped = len(chunk.completion.truncation.dropped_messages)
                    print(f"\n[dropped {dropped} old messages to fit the context]")
            print()
            messages.append({"role": "assistant", "content": "".join(parts)})


if __name__ == "__main__":
    main()
