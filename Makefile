# Two entry points: `make demo` (install, run the demo study) and `make test` (install, run the tests).
# Both create .venv with pip; versions are pinned by constraints.txt (the set the tests ran with).

PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
DEMO_ROOT ?= demo_output
INSTALL_FLAGS = --disable-pip-version-check --constraint constraints.txt

.PHONY: demo test install install-test clean

# Set-up output goes to stderr, so that stdout of `make demo` holds the study's result lines only.
$(VENV)/bin/python:
	@echo "Creating $(VENV)" >&2
	@$(PYTHON) -m venv $(VENV) >&2

# The stamp files re-run the install when the dependency files change.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt
	@echo "Installing fly64 and its dependencies into $(VENV)" >&2
	@$(PIP) install $(INSTALL_FLAGS) -e '.[classical,tensorflow]' >&2
	@touch $@

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml constraints.txt
	@echo "Installing fly64 with the test extras into $(VENV)" >&2
	@$(PIP) install $(INSTALL_FLAGS) -e '.[test,classical,tensorflow,cluster]' >&2
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	@$(VENV)/bin/fly64 run --root $(DEMO_ROOT) --config configs/demo.toml

test: install-test
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO_ROOT)
