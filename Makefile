# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, build llama-cpp-python for this CPU (cached), install localllm and
# fetch the default model into the model store, with progress shown.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.localllm-installed

.PHONY: demo test lint typecheck unit docs bench setup model tools browser soak fuzz serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml scripts/install_llama_cpp.py
	$(BIN)/python scripts/install_llama_cpp.py
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP)

model: setup
	$(BIN)/localllm pull

demo: model
	$(BIN)/python examples/quickstart.py

lint: setup
	$(BIN)/ruff check localllm tests benchmarks examples scripts

typecheck: setup
	$(BIN)/mypy

# the chat page's tests drive Debian's chromium (Playwright cannot download its own here)
browser:
	$(PYTHON) scripts/install_browser.py

# the remote-backend tests run llama.cpp's llama-server, built once (cached) by `tools`
unit: model tools browser
	$(BIN)/python -m pytest

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d build/site

test: lint typecheck docs unit

bench: model tools
	$(BIN)/python benchmarks/report.py

# the long soaks: the server's (make test runs 2,000 requests; this runs 20,000), load/close
# cycles (200; 1,000) and cancelled requests on one model (about 1,000; 5,000)
soak: model
	LOCALLLM_SOAK_REQUESTS=20000 $(BIN)/python -m pytest tests/test_server_load.py -k soak -s
	LOCALLLM_LOAD_CYCLES=1000 $(BIN)/python -m pytest tests/test_soak_load.py -s
	LOCALLLM_CANCEL_REQUESTS=5000 $(BIN)/python -m pytest tests/test_concurrency.py -k interference -s

# each fuzzer for 600 s (make test runs them for 60 s in tests/test_fuzz.py); what they learn
# is kept in build/fuzz/corpus, and a failing input is saved in build/fuzz/TARGET/
FUZZ_SECONDS ?= 600
fuzz: setup
	for target in gguf ggml onnx-folder chat-template image; do \
		$(BIN)/python -m localllm.support.fuzz $$target --seconds $(FUZZ_SECONDS) \
			--corpus build/fuzz/corpus/$$target || exit 1; \
	done

serve: model
	$(BIN)/localllm serve

# llama-batched-bench and llama-server, the reference for batching and serving (cached)
tools: setup
	$(BIN)/python scripts/build_reference_tools.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
