# The two commands of the README: `make demo` (main job) and `make test`.
# .venv is the circuit-tracer environment: torch 2.13.0 (the CPU wheel) first, then the project with its
# circuit-tracer extra (transformers 4.57.x, huggingface-hub < 1, nnsight 0.7). .venv-tf5 is a lean second
# environment on the newest transformers 5, where the tests that do not need circuit-tracer run again.
VENV   := .venv
PY     := $(VENV)/bin/python
FDB    := $(VENV)/bin/featuredb
STAMP  := $(VENV)/.installed-stamp
VENV5  := .venv-tf5
PY5    := $(VENV5)/bin/python
STAMP5 := $(VENV5)/.installed-stamp
PIP    := -m pip install -q --disable-pip-version-check

.PHONY: demo test bench clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) $(PIP) torch==2.13.0
	$(PY) $(PIP) -e '.[dev,circuit-tracer,ray,s3]'
	touch $(STAMP)

$(STAMP5): pyproject.toml
	test -x $(PY5) || python3 -m venv $(VENV5)
	$(PY5) $(PIP) torch==2.13.0
	$(PY5) $(PIP) -e '.[dev,ray,s3]' 'transformers>=5'
	touch $(STAMP5)

# The main job: default model -> offline corpus -> transcoders for all 30 layers -> index -> labels -> searches
# -> attribution graphs (circuit-tracer), labelled and grouped -> exports.
demo: $(STAMP)
	$(FDB) demo

# The tracer's viewer tests open pages in headless Chromium (Debian's package); the offline copy of
# circuit-tracer's frontend takes its JavaScript libraries from the npm registry.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@command -v npm >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null)

test: $(STAMP) $(STAMP5) browser
	$(PY) -m pytest -q
	$(PY5) -m pytest -q -m "not circuit_tracer"

bench: $(STAMP)
	$(PY) bench/bench_store.py

clean:
	rm -rf $(VENV) $(VENV5) data/featuredb.duckdb data/corpus data/transcoders data/features
