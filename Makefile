# Short names for the commands in README.md. Everything installs into .venv from pinned versions
# (pyproject.toml's, and constraints.txt for what they pull in): torch first (sam2 is a source
# distribution built against it), then the rest. Label Studio gets its own .venv-labelstudio
# (its pins clash with ours), pinned by constraints-labelstudio.txt.
# The set-ups `make test` and `make annotate` need (.venv, .venv-labelstudio, Debian packages)
# are independent: they install side by side (1.8 min instead of 2.8 here).
MAKEFLAGS += --jobs=3
VENV := .venv
BIN := $(VENV)/bin
LS_VENV := .venv-labelstudio
LABEL_STUDIO := $(LS_VENV)/bin/label-studio
DATA ?= ../shared/data/kvasir-seg
IMAGES ?= $(DATA)/images
SAMPLE ?= cju0qkwl35piu0993l0dewei2
PORT ?= 8080
BACKEND_PORT ?= 9090
TITLE ?= Polyps
CODE := polypseg backends serverless tests benchmarks docs training

.PHONY: install install-labelstudio system-packages annotate lint check test demo constraints

# $(call install-into,VENV,PIP FLAGS): polypseg and its tools, editable, torch first.
define install-into
	python3.11 -m venv $(1)
	$(1)/bin/pip install --quiet $(2) torch==2.14.1 torchvision==0.29.1 setuptools wheel
	SAM2_BUILD_CUDA=0 $(1)/bin/pip install --quiet $(2) --no-build-isolation sam2==1.1.0
	$(1)/bin/pip install --quiet $(2) --no-build-isolation -e ".[dev]"
endef

$(BIN)/polypseg: pyproject.toml constraints.txt
	$(call install-into,$(VENV),-c constraints.txt)
	touch $@

install: $(BIN)/polypseg

$(LABEL_STUDIO): constraints-labelstudio.txt
	python3.11 -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet -c constraints-labelstudio.txt label-studio==1.23.2
	touch $@

install-labelstudio: $(LABEL_STUDIO)

# After a change of pins in pyproject.toml: install afresh from the pins alone, into venvs of
# their own, and record what came (then `make install` reinstalls .venv from the new file).
PINS := .venv-pins
constraints:
	rm -rf $(PINS) $(PINS)-labelstudio
	$(call install-into,$(PINS),)
	{ sed -n '/^#/p' constraints.txt; $(PINS)/bin/pip freeze --all --exclude-editable | grep -v '^pip=='; } > constraints.txt.new
	python3.11 -m venv $(PINS)-labelstudio
	$(PINS)-labelstudio/bin/pip install --quiet label-studio==1.23.2
	{ sed -n '/^#/p' constraints-labelstudio.txt; $(PINS)-labelstudio/bin/pip freeze --all | grep -v '^pip=='; } > constraints-labelstudio.txt.new
	mv constraints.txt.new constraints.txt
	mv constraints-labelstudio.txt.new constraints-labelstudio.txt
	rm -rf $(PINS) $(PINS)-labelstudio

# Debian packages the tests use: Chromium for the browser test (driven by Playwright, which
# downloads no browser), redis-server for the CVAT tracker's state store, docker-compose to
# check docker-compose.yml (where docker compose v2 is missing), and postgresql for the team
# test's Label Studio database (the test runs its own cluster; the package's is not needed).
# apt asks nothing: it runs beside the pip installs, where make gives it no terminal input.
system-packages:
	command -v chromium >/dev/null && command -v redis-server >/dev/null && \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \
		{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium redis-server postgresql docker-compose; }

# The main job: Label Studio with the polypseg backend and a project of the images in IMAGES
# (another IMAGES folder joins the same project TITLE as more tasks).
annotate: install install-labelstudio
	$(BIN)/python -m backends.labelstudio.quickstart $(if $(VIDEO),--video "$(VIDEO)",--images "$(IMAGES)") \
		--title "$(TITLE)" --port $(PORT) --backend-port $(BACKEND_PORT)

lint: install
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy polypseg backends

# The fast loop while changing code: lint, types, and the tests not marked slow (no Label Studio,
# browser or training runs); `make test` runs everything, as CI does.
check: lint
	$(BIN)/pytest -m "not slow" -q

test: lint install-labelstudio system-packages
	$(BIN)/pytest

# The shipped model on one sample frame, and its scores on the held-out validation images
# (for another DATA folder: NAMES= SAMPLE=... BOX=...).
NAMES ?= training/splits/kvasir-seg-val.txt
BOX ?= 38,5,430,338
demo: install
	$(BIN)/polypseg segment $(DATA)/images/$(SAMPLE).jpg --box $(BOX) --out demo/mask.png --overlay demo/overlay.png
	$(BIN)/polypseg evaluate --images $(DATA)/images --masks $(DATA)/masks \
		$(if $(wildcard $(DATA)/bboxes.json),--boxes $(DATA)/bboxes.json) $(if $(NAMES),--names $(NAMES)) \
		--box-noise 0.1 --report demo/report
