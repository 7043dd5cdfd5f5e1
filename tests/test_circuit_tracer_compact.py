"""`featuredb export circuit-tracer --layout compact`: circuit-tracer's index.json.gz + layer_{L}.bin, read as its
frontend reads them (Python copy of the reader, then the real page in Chromium), and bad input."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import ssl
import struct
import subprocess
import threading
import time
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from chromium_page import Page, chromium_tab
from conftest import MODEL, SOURCE
from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.formats import circuit_tracer_compact
from featuredb.formats.circuit_tracer_export import even_histogram
from featuredb.identity import cantor_pair, cantor_unpair


def export(db: Path, out: Path, *extra: str) -> dict[str, Any]:
    res = CliRunner().invoke(cli, ["export", "circuit-tracer", str(out), "--layout", "compact", "--db", str(db),
                                   "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def read_feature(out: Path, feature_id: int) -> dict[str, Any]:
    """circuit-tracer's reader in Python: loadFeatureFromBinary (init-feature-examples.js) + getFile 'bin' (util.js)."""
    layer, index = cantor_unpair(feature_id)
    index_data = json.loads(gzip.decompress((out / "index.json.gz").read_bytes()))
    entry = index_data[str(layer)]  # indexData[layerIdx]: JS turns the number into the object key
    start, end = entry["offsets"][index], entry["offsets"][index + 1]
    data = (out / entry["filename"]).read_bytes()
    body = data[start:end + 1]  # `Range: bytes=${start}-${end}` is inclusive of end
    (n,) = struct.unpack("<I", body[:4])  # bytes[0] | bytes[1] << 8 | ...
    return json.loads(zlib.decompress(body[4:4 + n]))  # pako.inflate: zlib (or gzip) stream


def store_feature(db: Path, index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with FeatureStore(db, read_only=True) as store:
        cur = store.con.execute('SELECT * FROM features WHERE "modelId" = ? AND "layer" = ? AND "index" = ?',
                                [MODEL, SOURCE, index])
        feature = dict(zip([d[0] for d in cur.description], cur.fetchone()))
        cur = store.con.execute('SELECT "tokens", "values", "maxValue", "minValue", "binMin" FROM activations '
                                'WHERE "modelId" = ? AND "layer" = ? AND "index" = ?', [MODEL, SOURCE, index])
        acts = [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]
    return feature, acts


def test_compact_export_reads_back_as_the_stores_features(store_db: Path, tmp_path: Path) -> None:
    with FeatureStore(store_db) as store:  # a hole in the indices: the dense offsets give it an empty range
        store.con.execute('DELETE FROM features WHERE "index" = 5')
    out = tmp_path / "features"
    report = export(store_db, out)
    assert report["features"] == 39 and report["layers"] == [6] and report["layout"] == "compact"
    assert sorted(p.name for p in out.iterdir()) == ["index.json.gz", "layer_6.bin"]
    index = json.loads(gzip.decompress((out / "index.json.gz").read_bytes()))
    offsets = index["6"]["offsets"]
    assert len(offsets) == 41 and offsets[5] == offsets[6] and offsets[-1] == (out / "layer_6.bin").stat().st_size
    assert report["bytes"] == sum(p.stat().st_size for p in out.iterdir())

    json_out = tmp_path / "json"
    res = CliRunner().invoke(cli, ["export", "circuit-tracer", str(json_out), "--db", str(store_db), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["layout"] == "json", res.output
    models = pytest.importorskip("circuit_tracer.frontend.feature_models")
    for i in (0, 1, 4, 6, 39):
        record = read_feature(out, cantor_pair(6, i))
        models.Model.model_validate(record)  # circuit-tracer's own pydantic model of a feature file
        assert record == json.loads((json_out / MODEL / f"{cantor_pair(6, i)}.json").read_text())
        feature, acts = store_feature(store_db, i)
        assert record["index"] == i and record["transcoder_id"] == f"{MODEL}/{SOURCE}"
        top = sorted((a for a in acts if a["binMin"] is None or a["binMin"] < 0), key=lambda a: -a["maxValue"])
        shown = record["examples_quantiles"][0]
        assert shown["quantile_name"] == "Top activations" and len(top) == 4
        assert [e["tokens"] for e in shown["examples"]] == [a["tokens"] for a in top]
        assert [e["tokens_acts_list"] for e in shown["examples"]] == [a["values"] for a in top]
        assert record["top_logits"] == feature["pos_str"] and record["bottom_logits"] == feature["neg_str"]
        assert record["top_logits_values"] == feature["pos_values"]
        assert record["activation_frequency"] == feature["frac_nonzero"]
        assert record["histogram"] == even_histogram(feature["freq_hist_data_bar_values"],
                                                     feature["freq_hist_data_bar_heights"],
                                                     record["act_min"], record["act_max"])
        assert sum(record["histogram"]) == pytest.approx(sum(feature["freq_hist_data_bar_heights"]))


def test_unknown_model_or_source_is_one_line_and_writes_nothing(store_db: Path, tmp_path: Path) -> None:
    for flag, value in (("--model", "no-such-model"), ("--source", "9-no-such-set")):
        out = tmp_path / "out"
        res = CliRunner().invoke(cli, ["export", "circuit-tracer", str(out), "--layout", "compact", flag, value,
                                       "--db", str(store_db)])
        assert res.exit_code == 1
        assert res.output.startswith("featuredb: error: ") and res.output.count("\n") == 1, res.output
        assert value in res.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "store.duckdb"]  # no OUT, no temp folder


def test_the_same_store_exports_the_same_bytes_at_any_time(store_db: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    export(store_db, tmp_path / "a")
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)  # gzip stamps its header with the clock
    export(store_db, tmp_path / "b")
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == \
        {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}


def test_a_failure_mid_export_leaves_the_previous_export_untouched(store_db: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "features"
    export(store_db, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = circuit_tracer_compact.encode_record, []

    def failing(record: dict[str, Any]) -> bytes:
        calls.append(1)
        if len(calls) == 20:
            raise OSError("disk full")
        return real(record)

    monkeypatch.setattr(circuit_tracer_compact, "encode_record", failing)
    res = CliRunner().invoke(cli, ["export", "circuit-tracer", str(out), "--layout", "compact", "--db",
                                   str(store_db)])
    assert res.exit_code != 0 and isinstance(res.exception, OSError)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "features", "store.duckdb"]
    monkeypatch.setattr(circuit_tracer_compact, "encode_record", real)
    export(store_db, out)  # a second export replaces the first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["export", "circuit-tracer", str(tmp_path / "other"), "--layout", "compact",
                                   "--db", str(store_db)])
    assert res.exit_code == 1 and "not a compact circuit-tracer export" in res.output
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# ---- circuit-tracer's own server and page, in headless Chromium ----------------------------------------------

HUB_REPO = "featuredb-local/demo-model"  # the graph's metadata.scan: circuit-tracer 0.5.0 reads the compact
# layout from https://huggingface.co/{scan}/resolve/main/features/; Chromium maps that host to a loopback stand-in


class _Hub(BaseHTTPRequestHandler):
    """The two things the Hugging Face hub does for the page: files under {repo}/resolve/main/, Range and CORS."""

    root: Path
    seen: list[tuple[str, str, str]]

    def log_message(self, *args: Any) -> None:
        pass

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length")

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self._cors()
        self.end_headers()

    def do_HEAD(self) -> None:
        self._file(head=True)

    def do_GET(self) -> None:
        self._file(head=False)

    def _file(self, head: bool) -> None:
        prefix = f"/{HUB_REPO}/resolve/main/features/"
        path = self.root / self.path[len(prefix):].split("?")[0] if self.path.startswith(prefix) else None
        rng = self.headers.get("Range", "")
        self.seen.append((self.command, self.path, rng))
        if path is None or not path.is_file():
            self.send_response(404)
            self._cors()
            self.end_headers()
            return
        data = path.read_bytes()
        if rng.startswith("bytes="):
            a, b = rng[6:].split("-")
            start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self._cors()
        self.end_headers()
        if not head:
            self.wfile.write(body)


@contextmanager
def hub_stand_in(root: Path, work: Path) -> Iterator[tuple[int, list[tuple[str, str, str]]]]:
    """An HTTPS server on loopback with a self-signed huggingface.co certificate; yields (port, requests seen)."""
    key, cert = work / "hub.key", work / "hub.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=huggingface.co"], check=True, capture_output=True, timeout=60)
    seen: list[tuple[str, str, str]] = []
    handler = type("Hub", (_Hub,), {"root": root, "seen": seen})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1], seen
    finally:
        srv.shutdown()
        srv.server_close()


def circuit_tracer_site(ct_frontend: Path, work: Path) -> Path:
    """The installed circuit-tracer's page as shipped, except that its CDN <script> tags load the same libraries
    from vendor/ (this machine is offline); util.js and the feature-examples code are untouched."""
    from importlib.resources import files

    from tracer.offline_frontend import PATCHES

    site = work / "ct-site"
    shutil.copytree(str(files("circuit_tracer") / "frontend" / "assets"), site)
    shutil.copytree(ct_frontend / "vendor", site / "vendor")
    for rel, old, new in PATCHES:
        if rel in ("index.html", "vendor/d3-jetpack.js"):
            path = site / rel
            path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return site


@contextmanager
def chromium(hub_port: int, work: Path) -> Iterator[Page]:
    """A tab whose requests for huggingface.co go to the stand-in hub on `hub_port`."""
    with chromium_tab(work, f"--host-resolver-rules=MAP huggingface.co 127.0.0.1:{hub_port}",
                      "--ignore-certificate-errors") as page:
        yield page


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.circuit_tracer
def test_circuit_tracers_own_server_and_page_show_the_compact_export(store_db: Path, tmp_path: Path) -> None:
    local_server = pytest.importorskip("circuit_tracer.frontend.local_server")
    from circuit_tracer.frontend.utils import add_graph_metadata

    from test_circuit_tracer_frontend import BUILT, label_into, offline_frontend, prepare_offline_frontend

    ct_frontend = offline_frontend(BUILT) or prepare_offline_frontend(BUILT)  # vendor/ libraries from npm
    out = tmp_path / "features"
    export(store_db, out)
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    labelled = label_into(graphs, store_db, tmp_path)
    graph = json.loads(labelled.read_text())
    graph["metadata"].update(scan=HUB_REPO, slug="dallas")
    labelled.write_text(json.dumps(graph))
    add_graph_metadata(graph["metadata"], str(graphs))  # circuit-tracer's own graph-metadata.json writer
    expected = read_feature(out, cantor_pair(6, 1))
    top_tokens = [t.strip() for t in expected["examples_quantiles"][0]["examples"][0]["tokens"] if t.strip()]

    port = _free_port()
    server = local_server.serve(data_dir=str(graphs), frontend_dir=circuit_tracer_site(ct_frontend, tmp_path),
                                port=port)
    try:
        with hub_stand_in(out, tmp_path) as (hub_port, seen), chromium(hub_port, tmp_path) as page:
            page.call("Page.enable")
            page.call("Runtime.enable")
            page.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
            page.call("Page.navigate", url=f"http://127.0.0.1:{port}/index.html?slug=dallas")
            try:
                page.wait_for("document.querySelectorAll('text.node').length > 5")
            except AssertionError:
                print("\n".join(server.get_logs()[-30:]))  # circuit-tracer's request log, shown on failure
                raise
            where = page.js("""(() => {
                const el = [...document.querySelectorAll('text.node')].find(e => e.__data__?.nodeId === '6_1_1')
                el.scrollIntoView({block: 'center', inline: 'center'})
                const r = el.getBoundingClientRect()
                return [r.x + r.width / 2, r.y + r.height / 2] })()""")
            for kind in ("mouseMoved", "mousePressed", "mouseReleased"):  # a real click on the node
                page.call("Input.dispatchMouseEvent", type=kind, x=where[0], y=where[1], button="left",
                          clickCount=1)
            panel = page.wait_for(f"""(() => {{
                const t = document.querySelector('.feature-detail')?.innerText || ''
                return t.includes({json.dumps(top_tokens[-1])}) && t.includes('Top activations') ? t : '' }})()""")
            bars = page.wait_for("document.querySelectorAll('.histogram-placeholder svg rect').length")
            shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    finally:
        server.stop()
    (tmp_path / "compact.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", shot[16:24])
    assert (width, height) == (1600, 1000) and len(shot) > 50_000, (width, height, len(shot))

    text = " ".join(panel.split())
    assert "max-act-logits label" in text  # the clicked node's label, from the labelled graph
    assert " ".join(top_tokens) in text  # its top activation's tokens, from the compact export
    assert expected["top_logits"][0].strip() in text  # its logits
    assert expected["examples_quantiles"][1]["quantile_name"] in text
    assert bars >= len(expected["histogram"])  # the activation histogram, one bar per bin
    hub = [(m, p.rsplit("/", 1)[1], r) for m, p, r in seen]
    assert ("HEAD", "index.json.gz", "") in hub and ("GET", "index.json.gz", "") in hub
    offsets = json.loads(gzip.decompress((out / "index.json.gz").read_bytes()))["6"]["offsets"]
    assert ("GET", "layer_6.bin", f"bytes={offsets[1]}-{offsets[2]}") in hub  # one Range request per feature
