# Two entry points: `make demo` (install, run the demo study) and `make test` (install, run the tests).
# Both create .venv with pip; versions are pinned by constraints.txt (the set the tests ran with).

PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
DEMO_ROOT ?= demo_output
INSTALL_FLAGS = --disable-pip-version-check --constraint constraints.txt

.PHONY: demo test install install-test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The stamp files re-run the install when the dependency files change.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install $(INSTALL_FLAGS) -e '.[classical,tensorflow]'
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install $(INSTALL_FLAGS) -e '.[test,classical,tensorflow,cluster]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/fly64 run --root $(DEMO_ROOT) --config configs/demo.toml

test: install-test
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO_ROOT)
