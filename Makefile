# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch/torchvision are pinned in pyproject.toml as ranges; these exact builds are the ones CI uses.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= out/demo

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(VENV)/bin/c2f label samples/train $(DEMO_OUT) --samples-per-shard 4 --preset tiny-random
	$(VENV)/bin/c2f inspect $(DEMO_OUT) --out $(DEMO_OUT)/grid.png

test: $(STAMP)
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/bench_reader.py
	$(PY) bench/bench_validate.py

clean:
	rm -rf out .pytest_cache
