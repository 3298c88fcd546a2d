# Short names for the commands in README.md. Everything installs into .venv from pinned versions:
# torch first (sam2 is a source distribution built against it), then the rest.
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/kvasir-seg
SAMPLE ?= cju0qkwl35piu0993l0dewei2
CODE := polypseg tests benchmarks

.PHONY: install lint test demo

$(BIN)/polypseg: pyproject.toml
	python3.11 -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1 setuptools wheel
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --quiet --no-build-isolation sam2==1.1.0
	$(BIN)/pip install --quiet --no-build-isolation -e ".[dev]"
	touch $@

install: $(BIN)/polypseg

lint: install
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy polypseg

test: lint
	$(BIN)/pytest

# The main job until the Label Studio backend lands: the shipped model on a sample frame, and
# its scores on the held-out validation images (for another DATA folder: NAMES= SAMPLE=... BOX=...).
NAMES ?= training/splits/kvasir-seg-val.txt
BOX ?= 38,5,430,338
demo: install
	$(BIN)/polypseg segment $(DATA)/images/$(SAMPLE).jpg --box $(BOX) --out demo/mask.png --overlay demo/overlay.png
	$(BIN)/polypseg evaluate --images $(DATA)/images --masks $(DATA)/masks \
		$(if $(wildcard $(DATA)/bboxes.json),--boxes $(DATA)/bboxes.json) $(if $(NAMES),--names $(NAMES)) \
		--box-noise 0.1 --report demo/report
