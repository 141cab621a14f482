# Set-up and everyday commands. Everything lives in .venv; nothing is installed system-wide.
PYTHON ?= python3
VENV   ?= .venv
# The torch build to install. PyPI's Linux wheels of this version carry CUDA; override e.g.
# `make run TORCH=torch` for the newest release or a local CPU-only wheel.
TORCH  ?= torch==2.13.0

BIN := $(VENV)/bin

.PHONY: install run test bench demo-model demo-captioner clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: install
	$(BIN)/lumina-studio

# One test process per core, at most four: most of the suite's time is processes starting and importing.
test: install
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -n auto --maxprocesses 4

bench: install
	$(BIN)/python bench/bench_generate.py

demo-model: install
	$(BIN)/python -m trainer.demo

demo-captioner: install
	$(BIN)/python -m trainer.demo_captioner

clean:
	rm -rf $(VENV) .pytest_cache
