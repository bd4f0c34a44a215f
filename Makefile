# The README's two commands: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install server bench clean

# uv (from PyPI) installs the ~1.5 GB of wheels several times faster than pip; pip is the
# fallback when uv cannot be installed or fails.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv && $(BIN)/python -m uv pip install -q --python $(BIN)/python -e '.[test]' \
	  || $(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on synthetic data and the embedded SQLite store (./mlflow.db): synth ->
# prepare -> ImageNet stand-in -> every run of Tables II-IV and Figures 1-3 -> summarize.
demo: $(STAMP)
	$(BIN)/rssc demo --out demo_out

# Lint and dead code first (seconds; settings in pyproject.toml), so a slip fails before the
# suite starts. Then two workers, one test file each at a time (module fixtures are built
# once): the slow tests mostly wait on subprocesses and servers, so the suite takes ~18 min
# here instead of ~30.
test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m vulture
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -rs --durations=20 $(PYTEST_ARGS)

server: $(STAMP)
	$(BIN)/rssc server

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts demo_out rssc_outputs
