# Two commands do everything on a fresh machine:
#   make demo   build the realistic head data (first use) and run the quick security audit
#   make test   run the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lock bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly pinned, so no resolver step can pull a different (CUDA) build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedi2i audit --preset quick --out runs/audit-quick

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Re-pin every dependency after changing pyproject.toml (torch stays at exactly 2.13.0).
lock: $(STAMP)
	{ echo '# Lock file: every dependency pinned (torch exactly 2.13.0, the CPU build). Regenerate with `make lock`.'; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^-e' | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > constraints.txt

clean-venv:
	rm -rf $(VENV)
