"""Structured output: the answer always parses and validates against a pydantic model.

Run: .venv/bin/python examples/structured_json.py
"""

from typing import Literal

from pydantic import BaseModel, Field

import localllm


class City(BaseModel):
    name: str = Field(max_length=30)
    country: Literal["France", "Italy", "Spain", "Germany"]
    famous_for: str = Field(max_length=60)


def main() -> None:
    with localllm.load(context_length=1024) as model:
        result = model.chat([{"role": "user", "content": "Describe Paris as JSON."}],
                            response_format=City, max_tokens=120, temperature=0)
    city = City.model_validate_json(result.text)
    print(city)


if __name__ == "__main__":
    main()
