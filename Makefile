# The README's two commands: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install server bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# A small end-to-end run on synthetic data and the embedded SQLite store (./mlflow.db):
# synth -> prepare -> pretrain -> registry -> finetune and probe -> summarize.
DEMO := demo_out
demo: $(STAMP)
	@echo "[demo] SYNTHETIC DATA: every number below is from synthetic stand-in images."
	$(BIN)/rssc synth --out $(DEMO)/synth --images-per-class 6 --image-size 64 --datasets resisc45,ucm
	RSSC_DATA_DIR=$(DEMO)/data $(BIN)/rssc prepare resisc45 --manual-dir $(DEMO)/synth/resisc45
	RSSC_DATA_DIR=$(DEMO)/data $(BIN)/rssc prepare ucm --manual-dir $(DEMO)/synth/ucm
	RSSC_DATA_DIR=$(DEMO)/data $(BIN)/rssc pretrain --source resisc45 --profile demo
	RSSC_DATA_DIR=$(DEMO)/data $(BIN)/rssc finetune --source resisc45 --target ucm --profile demo --no-log-model
	RSSC_DATA_DIR=$(DEMO)/data $(BIN)/rssc probe --source resisc45 --target ucm --profile demo --solver lbfgs
	RSSC_DATA_DIR=$(DEMO)/data $(BIN)/rssc summarize --out $(DEMO)/summary
	@echo "[demo] browse the runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 $(PYTEST_ARGS)

server: $(STAMP)
	$(BIN)/rssc server

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) mlruns.db mlruns mlartifacts demo_out
