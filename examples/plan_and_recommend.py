"""Ask before loading: how would the default model run here, and which models fit?

Run: .venv/bin/python examples/plan_and_recommend.py
"""

import localllm


def main() -> None:
    plan = localllm.plan(context_length=4096)
    print(plan.describe())
    print("\nrecommended models for this machine (context 4096):")
    for rec in localllm.recommend(min_context=4096):
        print(f"  {rec.name:<26} {rec.quantization:<7} {rec.placement}")


if __name__ == "__main__":
    main()
