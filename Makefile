# Everything a fresh machine needs: `make demo` and `make test` set themselves up.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel by default; GPU users: make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
XVFB_PKGS := xvfb libxcb-icccm4 libxcb-keysyms1
DEMO_OUT ?= demo-output

.PHONY: all install demo test test-fast test-oldest test-newest test-smp lint bench xvfb clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[testing]"
	# nnU-Net's network package, for tests/test_families_loaders.py: --no-deps, as its timm would pull
	# a torchvision that replaces the pinned torch (the U-Nets need only torch and numpy)
	$(BIN)/python -m pip install -q --no-deps "dynamic-network-architectures>=0.4"
	touch $@

install: $(VENV)/.installed

# GUI tests need a real X server: Qt's offscreen platform gives vispy no OpenGL context.
xvfb:
	@if ! command -v xvfb-run >/dev/null 2>&1 || ! dpkg -s libxcb-icccm4 libxcb-keysyms1 >/dev/null 2>&1; then \
		echo "Installing $(XVFB_PKGS) ..."; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(XVFB_PKGS); \
	fi

demo: install
	$(BIN)/napari-unet-gradcam demo --out $(DEMO_OUT)

test: install xvfb
	QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python -m pytest $(PYTEST_ARGS)

# Seconds, not minutes: no napari viewer, no training, no subprocess runs, no wheel build.
test-fast: install
	$(BIN)/python -m pytest -m "not gui and not slow" $(PYTEST_ARGS)

# The oldest releases pyproject.toml allows, and the newest, each in its own venv under .nox/
# (see noxfile.py); not part of `make test`. Needs network for the installs.
test-oldest test-newest: install xvfb
	$(BIN)/python -m pip install -q "nox>=2024.3"
	TORCH_SPEC="$(TORCH_SPEC)" $(BIN)/nox -s $(subst test-,,$@) -- $(PYTEST_ARGS)

# smp (segmentation_models_pytorch) imports torchvision, and PyPI's torchvision does not import beside
# the default CPU torch: its own venv, with a matching pair (not part of `make test`; docs/models.md).
SMP_VENV ?= .venv-smp
SMP_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
test-smp:
	[ -x $(SMP_VENV)/bin/python ] || $(PYTHON) -m venv $(SMP_VENV)
	$(SMP_VENV)/bin/python -m pip install -q $(SMP_TORCH_SPEC)
	$(SMP_VENV)/bin/pip freeze | grep -iE '^(torch|torchvision)==' > $(SMP_VENV)/constraints.txt
	$(SMP_VENV)/bin/python -m pip install -q -c $(SMP_VENV)/constraints.txt -e ".[testing,smp]"
	$(SMP_VENV)/bin/python -m pytest tests/test_families_smp.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytorch-grad-cam pins torchvision, which would drag in another torch: install it without deps.
bench: install
	$(BIN)/python -m pip install -q --no-deps grad-cam ttach
	$(BIN)/python -m pip install -q captum matplotlib scikit-learn "opencv-python-headless>=4.10" imagecodecs
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(SMP_VENV) $(DEMO_OUT) .pytest_cache .nox build dist *.egg-info src/*.egg-info
