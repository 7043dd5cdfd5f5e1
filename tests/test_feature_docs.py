"""Pre-serialised GET feature documents: identical to get_feature, served gzipped, dropped on writes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import polars as pl
from click.testing import CliRunner

from conftest import MODEL, SOURCE
from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.store.feature_docs import FeatureDocs, build_feature_docs
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.server.app import create_app
from loopback import serve_in_thread


def test_documents_equal_get_feature_for_every_feature(small_export: Path, db_path: Path) -> None:
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        built = build_feature_docs(store, progress=False)
        assert built["features"] == 40
        docs = FeatureDocs(store)
        for (index,) in store.con.execute('SELECT "index" FROM features').fetchall():
            doc = docs.gzipped(MODEL, SOURCE, index)
            assert doc is not None
            assert gzip.decompress(doc).decode() == store.get_feature(MODEL, SOURCE, index).model_dump_json()
        assert docs.gzipped(MODEL, SOURCE, 999) is None


def test_server_sends_documents_and_a_write_drops_them(small_export: Path, db_path: Path) -> None:
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        expected = json.loads(store.get_feature(MODEL, SOURCE, 5).model_dump_json())
    res = CliRunner().invoke(cli, ["reindex", "--feature-docs", "--db", str(db_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["feature_docs_count"] == 40
    url_path = f"/api/feature/{MODEL}/{SOURCE}/5"
    app = create_app(str(db_path))
    with serve_in_thread(app) as url:
        zipped = httpx.get(url + url_path)  # httpx asks for gzip and inflates it
        plain = httpx.get(url + url_path, headers={"accept-encoding": "identity"})
        missing = httpx.get(f"{url}/api/feature/{MODEL}/{SOURCE}/999")
    app.state.store.close()  # release the file for the writer below
    assert zipped.headers["content-encoding"] == "gzip" and zipped.json() == expected
    assert "content-encoding" not in plain.headers and plain.json() == expected
    assert missing.status_code == 404 and "error" in missing.json()

    with FeatureStore(db_path) as store:  # a new explanation: the documents must not serve the old one
        store.upsert({"explanations": pl.DataFrame({
            "id": ["new"], "modelId": [MODEL], "layer": [SOURCE], "index": [5], "typeName": ["np_max-act"],
            "scoreV1": [9.0], "description": ["freshly written"]})})
        assert store.con.execute("SELECT count(*) FROM feature_docs").fetchone()[0] == 0
    with serve_in_thread(create_app(str(db_path))) as url:
        after = httpx.get(url + url_path)
    assert "content-encoding" not in after.headers
    assert after.json()["explanations"][0]["description"] == "freshly written"
