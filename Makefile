# The two commands of the README: `make demo` (main job) and `make test`.
# Both create .venv on first use: torch 2.13.0 (the CPU wheel) first, then the project.
VENV  := .venv
PY    := $(VENV)/bin/python
FDB   := $(VENV)/bin/featuredb
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Until ingestion lands, the main job builds a store from a synthetic Neuronpedia export and searches it.
demo: $(STAMP)
	@echo "== 1/5 writing a synthetic Neuronpedia export (2,048 concept features) to data/demo-export"
	$(FDB) sample-export data/demo-export --features 2048
	@echo "== 2/5 importing it into data/featuredb.duckdb"
	$(FDB) import neuronpedia data/demo-export
	$(FDB) info
	@echo "== 3/5 searching explanations for 'Texas'"
	$(FDB) query "SELECT e.layer AS source, e.\"index\", e.description, round(f.frac_nonzero, 4) AS density FROM explanations e JOIN features f USING (feature_key) WHERE e.description ILIKE '%texas%' ORDER BY e.\"scoreV1\" DESC LIMIT 5"
	@echo "== 4/5 one feature as Neuronpedia's GET /api/feature JSON (first lines)"
	$(FDB) feature demo-model 6-demo-transcoder 0 | head -n 12
	@echo "== 5/5 exporting circuit-tracer feature files to data/demo-features"
	$(FDB) export circuit-tracer data/demo-features
	@echo "Done. Store: data/featuredb.duckdb. Try: $(FDB) --help"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/bench_store.py

clean:
	rm -rf $(VENV) data/featuredb.duckdb data/demo-export data/demo-features
