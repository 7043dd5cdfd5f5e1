# The two commands of the README: `make demo` (main job) and `make test`.
# Both create .venv on first use: torch 2.13.0 (the CPU wheel) first, then the project.
VENV  := .venv
PY    := $(VENV)/bin/python
FDB   := $(VENV)/bin/featuredb
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The main job: default model -> offline corpus -> trained transcoders -> index -> labels -> searches -> exports.
demo: $(STAMP)
	$(FDB) demo

# The tracer's viewer tests open pages in headless Chromium (Debian's package); the offline copy of
# circuit-tracer's frontend takes its JavaScript libraries from the npm registry.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@command -v npm >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null)

test: $(STAMP) browser
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/bench_store.py

clean:
	rm -rf $(VENV) data/featuredb.duckdb data/corpus data/transcoders data/features
