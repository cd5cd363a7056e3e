# Set-up and checks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve browser test lint bench bench-gpu clean

install: $(STAMP)

# Re-runs only when the lock file or the package metadata change.
$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=64" wheel
	# The lock pins the extras too (Ray for --ray among them).
	# sam2 ships as source: build it against the venv's torch (no isolated build pulling another torch),
	# without its optional CUDA extension.
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --quiet --no-build-isolation -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Offline, give the files by hand (README.md, "Offline"): make demo CLIP_WEIGHTS=FILE FREESOLO_WEIGHTS=FILE.
# CLIP_WEIGHTS is OpenAI's ViT-B/32 file, hence the QuickGELU architecture.
CLIP_WEIGHTS ?=
FREESOLO_WEIGHTS ?=
DEMO_WEIGHTS = $(if $(CLIP_WEIGHTS),--clip-model ViT-B-32-quickgelu --clip-weights "$(CLIP_WEIGHTS)") \
	$(if $(FREESOLO_WEIGHTS),--freesolo-weights "$(FREESOLO_WEIGHTS)")

demo: install
	@$(BIN)/globallocal segment examples/img_80472.jpg "the man on the right" \
		-o demo_out/man_on_the_right.png --overlay demo_out/man_on_the_right_overlay.png \
		--json demo_out/man_on_the_right.json $(DEMO_WEIGHTS) || { status=$$?; \
		echo "make demo: model files missing offline? make demo CLIP_WEIGHTS=FILE FREESOLO_WEIGHTS=FILE" \
			"(README.md, Offline)" >&2; exit $$status; }

serve: install
	$(BIN)/globallocal serve

# The headless browser the test of `globallocal serve` drives, and the fonts the pictures' caption tests draw
# CJK and colour emoji with (Debian packages; needs root or sudo).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && \
		test -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc && \
		test -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver \
			fonts-liberation fonts-dejavu-core fonts-noto-cjk fonts-noto-color-emoji; }

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/segment.py
	$(BIN)/python bench/freesolo.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/proposals.py
	$(BIN)/python bench/methods.py
	$(BIN)/python bench/tcl.py
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/vlm.py

# The whole measurement on one CUDA device, unattended, in 9 minutes: tables into $OUT (or bench_out/).
bench-gpu:
	bench/gpu.sh

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache *.egg-info
