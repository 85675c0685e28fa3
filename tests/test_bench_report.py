"""The benchmark report: tables, chart and README block built from one results dict."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_backends
import report

from localllm.models.gguf import read_gguf


def sample_report() -> dict:
    side = {"load_s": 0.5, "ttft_s": 1.5, "prompt_tokens_per_s": 140.0,
            "decode_tokens_per_s": 55.0, "peak_rss_mib": 220.0}
    raw = {**side, "decode_tokens_per_s": 50.0, "peak_rss_mib": 200.0}
    row = {"backend": "llama.cpp", "model": "SmolLM2-135M Q4_1", "localllm": side,
           "raw": raw, "ratio": {k: side[k] / raw[k] for k in side},
           "bytes_per_token": 100_000_000}
    return {"date": "2026-11-27", "backends": {"rows": [row]},
            "machine": {"name": "cpu-2c", "cpu": "Test CPU", "usable_cores": 2,
                        "isa": ["avx2"], "ram_gib": 24.0, "read_bandwidth_gb_s": 20.0}}


def test_table_cells_carry_the_value_and_the_ratio_and_the_ceiling() -> None:
    text = report.markdown(sample_report())
    line = next(x for x in text.splitlines() if x.startswith("| llama.cpp"))
    assert "55.0 (1.10×)" in line and "220 (1.10×)" in line
    assert "| 200 | 28% |" in line  # 20 GB/s ÷ 100 MB per token; 55 of 200 tok/s
    assert "20.0 GB/s" in text


def test_chart_is_written(tmp_path: Path) -> None:
    out = tmp_path / "chart.png"
    report.chart(sample_report(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_readme_block_is_replaced_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    monkeypatch.setattr(report, "README", readme)
    report.update_readme("| new |", "2026-11-27-cpu-2c")
    text = readme.read_text()
    assert "old" not in text and "| new |" in text and text.endswith("rest\n")
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="bench:start"):
        report.update_readme("| new |", "x")


def test_bytes_per_token_counts_a_tied_embedding_as_the_output_head(
        default_model_path: Path) -> None:
    info = read_gguf(default_model_path)
    assert "output.weight" not in {t.name for t in info.tensors}
    assert bench_backends.bytes_per_token(str(default_model_path)) == \
        sum(t.n_bytes for t in info.tensors)
