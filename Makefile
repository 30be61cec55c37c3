# The two commands a newcomer needs (see README.md):
#   make demo   install everything, then run the main job on its built-in default
#   make test   install everything, then run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo demo-styletts2 test test-e2e test-slow lint install system-deps clean

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'   # every integration + test tools, versions as tested
	$(PY) -m pip install --quiet --no-deps 'kokoro==0.9.4'  # Kokoro's torch classes only (see pyproject: extra kokoro)
	touch $(STAMP)

install: $(STAMP)

# espeak-ng drives phonemizer and the demo's voices; flite/festival add more voices; sox is handy.
system-deps:
	@if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v flite >/dev/null 2>&1; then \
		echo "installing system packages (espeak-ng, flite, festival, libsndfile)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			espeak-ng flite festival festvox-kallpc16k libsndfile1 >/dev/null; \
	fi

# The default demo: a new voice for Kokoro-82M (offline weights), six fine-tuning systems, forgetting on real speech.
demo: $(STAMP)
	$(PY) recipes/kokoro_demo/demo.py

# The StyleTTS 2 toy pipeline (pre-trains the smallest StyleTTS 2 for minutes; its audio is not speech).
demo-styletts2: $(STAMP)
	$(PY) recipes/styletts2_demo/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

# the end-to-end subset CI runs after `make test` (marker e2e): the StyleTTS 2 recipes curvature -> fine-tuning
# with every prior -> synthesis / evaluation / export, and the README's tiny commands as written
test-e2e: $(STAMP)
	$(PY) -m pytest -q -m e2e --durations=0

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
