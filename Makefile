# Two entry points, each creating the virtual environment it needs:
#   make demo   install, then run the main job on embedded data
#   make test   install with test extras, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_VERSION ?= 2.13.0

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
	$(BIN)/perceptsr demo --out demo_out

test: install-test
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) demo_out runs results
