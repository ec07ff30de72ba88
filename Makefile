# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch/torchvision are pinned in pyproject.toml as ranges; these exact builds are the ones CI uses.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= out/demo

.PHONY: setup demo pretrain-demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Weight-free labels (the `classical` preset) of samples/train, a grid, and the quality report.
demo: $(STAMP)
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(VENV)/bin/c2f label samples/train $(DEMO_OUT) --samples-per-shard 4 --preset classical
	$(VENV)/bin/c2f inspect $(DEMO_OUT) --out $(DEMO_OUT)/grid.png
	$(VENV)/bin/c2f report $(DEMO_OUT)
	@echo
	@echo "next: look at $(DEMO_OUT)/grid.png and open $(DEMO_OUT)/report/report.html in a browser;"
	@echo "      every shard has its per-sample table: $(DEMO_OUT)/*.parquet (pandas, polars, duckdb read them as one);"
	@echo "      select by SQL: c2f filter $(DEMO_OUT) --where \"key LIKE '%coffee%'\" --out coffee.json;"
	@echo "      make pretrain-demo pretrains a micro C2FMAE on these shards and probes it;"
	@echo "      docs/RUNNING.md labels with a trained model (--preset panoptic) on a GPU cluster."

# The whole path on CPU: label the samples, validate, report, pretrain a micro C2FMAE, probe it;
# then the same comparison on 300 synthetic scenes (whose classes a probe can score), pretrained on
# classical labels and on random masks of the same images (docs/QUALITY.md).
pretrain-demo: demo
	$(VENV)/bin/c2f pretrain $(DEMO_OUT) --output $(DEMO_OUT)-pretrain --model c2fmae_vit_micro --steps 300 \
		--batch-size 8 --workers 1 --blr 1e-2 --log-every 50 --vis-every 100
	$(VENV)/bin/c2f probe $(DEMO_OUT) --checkpoint $(DEMO_OUT)-pretrain/checkpoint.pt --batch-size 8
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(PY) bench/bench_classical_probe.py --images 300 --steps 300 --seeds 0 \
		--dir $(DEMO_OUT)-probe

# Lint is part of the tests: lint that CI does not run decays.
test: lint
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/bench_reader.py
	$(PY) bench/bench_validate.py
	$(PY) bench/bench_labeler.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_listing.py
	$(PY) bench/bench_train.py

clean:
	rm -rf out .pytest_cache
