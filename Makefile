# The README's two commands: `make serve` and `make test`. Everything else is a helper of theirs.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_DIR ?= exported_models/default
HOST ?= 127.0.0.1
PORT ?= 3000
# pip prints one warning per missing local index folder; keep the log readable.
PIP := $(BIN)/pip --disable-pip-version-check

.PHONY: install serve test model first-model bento image image-check engine clean
.DEFAULT_GOAL := serve

# One venv with every extra (train + serve + dev); re-installed when pyproject.toml changes.
$(BIN)/.installed: pyproject.toml
	@echo "==> creating $(VENV) with $(PY)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "==> installing the project with extras train, serve, dev (torch comes from this machine's disk)"
	$(PIP) install -q -e '.[train,serve,dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	@# labelme (dev) pulls the CPU-only onnxruntime through osam, which overwrites onnxruntime-gpu's files: put the one
	@# ONNX Runtime back (it carries the CPU provider too; the service opens CUDA only where a GPU is)
	@if $(PIP) show -q onnxruntime 2>/dev/null; then \
	  $(PIP) uninstall -q -y onnxruntime && \
	  $(PIP) install -q --no-deps --force-reinstall "$$(grep -o 'onnxruntime-gpu==[0-9.]*' pyproject.toml | head -1)"; fi
	@$(BIN)/python -c "import fastai, torch, onnxruntime, bentoml" || { echo "install failed: see the pip output above" >&2; exit 1; }
	@touch $@

install: $(BIN)/.installed

# Build the default model when exported_models/ holds none: synth -> fit -> export (the full demo, a few minutes).
model: install
	@if ls exported_models/*/model.onnx >/dev/null 2>&1; then \
	  echo "==> exported_models/ already holds a model: $$(ls exported_models/*/model.onnx | head -1)"; \
	else \
	  echo "==> no exported model yet: building the default one (python -m training demo)"; \
	  $(BIN)/python -m training demo --out $(MODEL_DIR); \
	fi

# What `make serve` starts from when exported_models/ holds none: a quick first model (about a minute), and the full
# demo training in the background, moved into its place when done; the server polls the folder (SEG_RELOAD_S) and
# serves the full model then, without a restart.
first-model: install
	@if ls exported_models/*/model.onnx >/dev/null 2>&1; then \
	  echo "==> exported_models/ already holds a model: $$(ls exported_models/*/model.onnx | head -1)"; \
	else \
	  echo "==> no exported model yet: a quick first model now (python -m training demo --quick), the full one after"; \
	  $(BIN)/python -m training demo --quick --out $(MODEL_DIR) && mkdir -p runs && \
	  { nohup $(BIN)/python -m training demo --replace --out $(MODEL_DIR) > runs/demo-full.log 2>&1 & } && \
	  echo "==> the full demo model trains in the background (runs/demo-full.log) and replaces the quick one when done"; \
	fi

serve: first-model
	@echo "==> serving $${SEG_MODEL_DIR:-$$(dirname $$(ls exported_models/*/model.onnx | head -1))} on http://$(HOST):$(PORT)"
	SEG_MODEL_DIR=$${SEG_MODEL_DIR:-$$(dirname $$(ls exported_models/*/model.onnx | head -1))} SEG_RELOAD_S=$${SEG_RELOAD_S:-10} \
	  $(BIN)/bentoml serve serving.service:SegmentationService --host $(HOST) --port $(PORT)

# The formatter and the linter first (ruff, configured in pyproject.toml), then the suite.
test: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The bento packs the model by tag: register the default export in BentoML's model store, then build.
bento: model
	$(BIN)/python -m contract.store $(MODEL_DIR)
	$(BIN)/bentoml build

# The serving image from the bento (deploy/image/Containerfile): FLAVOUR=cpu|cuda, BASE=a Python 3.11 image
# (default: a Debian 12 base made locally with debootstrap). Engine: docker or podman when running, else buildah.
FLAVOUR ?= cpu
image: model engine
	$(BIN)/python -m deploy.image build --flavour $(FLAVOUR) $(if $(BASE),--base $(BASE))

# Builds when missing, starts the image, waits for /readyz, posts a real photo; ends with one line.
image-check: model engine
	$(BIN)/python -m deploy.image check --flavour $(FLAVOUR)

# A container engine and debootstrap, from Debian's packages when missing (root only).
engine:
	@if { ! command -v buildah >/dev/null && ! docker info >/dev/null 2>&1 && ! podman info >/dev/null 2>&1; } || ! command -v debootstrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing buildah and debootstrap (Debian packages)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; \
	  else echo "no container engine: install docker, podman or buildah (and debootstrap)" >&2; exit 1; fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache
