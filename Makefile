# maskcore: every target installs what it needs into .venv first, so each works from a fresh clone.
# `make help` lists the targets.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# Stamps record what was installed against which pyproject.toml; editing it reinstalls.
# PYTHONWARNINGS=ignore keeps setuptools' notices about editable installs out of the output.
PIP := PYTHONWARNINGS=ignore $(BIN)/pip
INFER_STAMP := $(VENV)/.stamp-inference
ALL_STAMP   := $(VENV)/.stamp-all
DEMO_STAMP  := $(VENV)/.stamp-demo

# `make train` with the default DATA builds the bundled model: the face network on both shared
# datasets, the close-up network on the close-ups and masks drawn on their bare faces, paired. With DATA=... it trains that one
# model, unless CLOSEUPS=dir asks for a close-up network to pair with it.
ifeq ($(origin DATA),undefined)
CLOSEUPS ?= ../shared/datasets/face-mask
endif
DATA   ?= ../shared/datasets/face-mask ../shared/datasets/face-mask-scenes
CLOSEUPS ?=
OUT    ?= out/model
BOXES  ?= ../shared/datasets/face-mask-scenes
DETECTOR_OUT ?= out/detector
INPUT  ?=
RUNS   ?= results
# A stopped `make batch` is taken up in its own folder: with ARGS=--resume and no OUTPUT=, the
# newest folder under $(RUNS)/ that a stopped run left (its run.json.partial), not a new one
# where there would be nothing to resume.
STOPPED = $(patsubst %/run.json.partial,%,$(firstword $(shell ls -t $(RUNS)/*/run.json.partial 2>/dev/null)))
OUTPUT ?= $(or $(if $(filter --resume,$(ARGS)),$(STOPPED)),$(RUNS)/$(shell date -u +%Y%m%dT%H%M%SZ))
MODEL  ?=
ARGS   ?=

SOURCE  ?=
RESULTS ?=

.PHONY: help install install-inference test lint audit train train-detector batch report bench worker s3-up s3-down \
	worker-demo clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(BIN)/python:
	@echo "creating $(VENV) ..."
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip

$(INFER_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing the inference side into $(VENV) (ONNX Runtime, Pillow, NumPy, boto3, click) ..."
	@$(PIP) install -q -e .
	@touch $@

$(ALL_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing the project with training, Ray and test dependencies into $(VENV) ..."
	@$(PIP) install -q -e ".[train,test,ray]"
	@touch $@ $(INFER_STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing the inference side and the local S3 server (moto) into $(VENV) ..."
	@$(PIP) install -q -e ".[demo]"
	@touch $@ $(INFER_STAMP)

install: $(ALL_STAMP)  ## create .venv with the project, training, Ray and test dependencies

install-inference: $(INFER_STAMP)  ## create .venv with the inference side only (no TensorFlow)

test: $(ALL_STAMP)  ## run the test suite
	$(PY) -m pytest $(ARGS)

lint: $(ALL_STAMP)  ## ruff over the code, mypy (strict) over the library and the jobs
	$(BIN)/ruff check maskcore jobs tests
	$(BIN)/mypy

audit: $(INFER_STAMP)  ## audit each dataset (class folders or VOC boxes): make audit [DATA="dir dir"]
	@for d in $(DATA); do echo "== $$d"; $(BIN)/maskcore audit "$$d" $(ARGS) || exit $$?; done

train: $(ALL_STAMP)  ## train the face and close-up networks and pair them: make train [DATA="dir dir"] [CLOSEUPS=dir] [OUT=dir]
ifeq ($(strip $(CLOSEUPS)),)
	$(BIN)/maskcore train $(DATA) --out "$(OUT)" $(ARGS)
else
	$(BIN)/maskcore train $(DATA) --out "$(OUT)/faces" --refit $(ARGS)
	$(BIN)/maskcore train $(CLOSEUPS) --out "$(OUT)/closeups" --epochs 40 --patience 40 --drawn-masks $(ARGS)
	$(BIN)/maskcore pair "$(OUT)/faces" "$(OUT)/closeups" --out "$(OUT)"
endif

train-detector: $(ALL_STAMP)  ## fine-tune the face detector: make train-detector [BOXES=dir] [DETECTOR_OUT=dir]
	$(BIN)/maskcore train-detector "$(BOXES)" --out "$(DETECTOR_OUT)" $(ARGS)

batch: $(INFER_STAMP)  ## classify pictures: make batch INPUT=dir/ [OUTPUT=dir] [MODEL=model.onnx]
	@test -n "$(INPUT)" || { echo "usage: make batch INPUT=dir/ [OUTPUT=dir] [MODEL=path]" >&2; exit 2; }
	$(BIN)/maskcore batch "$(INPUT)" --out "$(OUTPUT)" $(if $(MODEL),--model "$(MODEL)") $(ARGS)

report: $(INFER_STAMP)  ## an HTML page of a run: make report RESULTS=results/<run> (or s3://...)
	@test -n "$(RESULTS)" || { echo "usage: make report RESULTS=dir-or-s3-prefix [ARGS=--annotate dir]" >&2; exit 2; }
	$(BIN)/maskcore report "$(RESULTS)" $(ARGS)

bench: $(ALL_STAMP)  ## speed benchmark -> docs/BENCHMARKS.md: make bench
	$(PY) -m jobs.bench --data $(firstword $(DATA)) --write docs/BENCHMARKS.md $(ARGS)

worker: $(INFER_STAMP)  ## watch a bucket: make worker SOURCE=s3://b/incoming/ RESULTS=s3://b/results/
	@test -n "$(SOURCE)" -a -n "$(RESULTS)" || { echo "usage: make worker SOURCE=s3://... RESULTS=s3://... [ARGS=--once]" >&2; exit 2; }
	$(BIN)/maskcore worker --source "$(SOURCE)" --results "$(RESULTS)" $(ARGS)

s3-up: $(DEMO_STAMP)  ## start a local S3 server (moto) on 127.0.0.1:5055 with bucket maskcore
	$(PY) infra/local/s3_local.py up

s3-down: $(DEMO_STAMP)  ## stop the local S3 server
	$(PY) infra/local/s3_local.py down

worker-demo: $(DEMO_STAMP)  ## upload examples/ to the local S3, run the worker --once, print the CSV, write a report
	$(PY) infra/local/s3_local.py demo

clean:  ## remove results and caches (keeps .venv)
	rm -rf results out .pytest_cache .ruff_cache
