# Two entry points, each creating the virtual environment it needs:
#   make demo   install, then run the main job on embedded data
#   make test   install with test extras, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# the demo uses the official NIQE parameters, VGG19 and LPIPS weights when ../shared/assets is beside the
# checkout (set PERCEPTSR_ASSETS to use another folder); without them it fits NIQE and says so
PERCEPTSR_ASSETS ?= $(wildcard $(CURDIR)/../shared/assets)

.PHONY: install install-test demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is installed explicitly first: a bare requirement can resolve to a multi-GB CUDA build.
install: $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[test]"

demo: install
	PERCEPTSR_ASSETS="$(PERCEPTSR_ASSETS)" $(BIN)/perceptsr demo --out demo_out

test: install-test
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) demo_out runs results
