# `make demo` and `make test` create .venv with Python 3.10 when it is
# missing, install neurodeploy with its test extras, then run the job.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# lava-nc 0.10.0 and lava-dl 0.6.0 require Python 3.10 exactly. Try
# python3.10 on PATH, then pyenv's versions folder.
PYTHON310 ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: demo test clean

demo: $(STAMP)
	$(VENV)/bin/neurodeploy pipeline --model demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
		if [ -z "$(PYTHON310)" ]; then \
			echo "error: Python 3.10 not found (lava-nc 0.10.0 and lava-dl 0.6.0 need exactly 3.10)." >&2; \
			echo "Install it (e.g. 'pyenv install 3.10' or your system's python3.10 package) or run 'make PYTHON310=/path/to/python3.10'." >&2; \
			exit 1; \
		fi; \
		$(PYTHON310) -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs build *.egg-info
