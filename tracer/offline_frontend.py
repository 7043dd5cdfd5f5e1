"""circuit-tracer's graph frontend made to work offline: its wheel from PyPI, its JS libraries from npm.

circuit-tracer's `index.html` loads d3, Anthropic's d3-jetpack fork, dagre and pako from CDNs, and its
feature panel fetches feature files from Hugging Face or a CDN. `prepare_offline_frontend` copies the
assets, serves those libraries from `vendor/` (npm's d3 7, d3-collection, d3-jetpack, dagre, pako, plus
a few lines that add what the fork adds) and points feature requests at the local server's
`/features/{scan}/{cantor}.json`, which `trace serve` answers from the store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from featuredb.errors import BadInputError

CIRCUIT_TRACER = "circuit-tracer==0.5.0"
ASSETS_IN_WHEEL = "circuit_tracer/frontend/"
DEFAULT_DIR = Path("data") / "circuit-tracer-frontend"
CHECKOUT_DIR = Path(__file__).resolve().parents[1] / DEFAULT_DIR  # where `trace frontend` run in the checkout builds it
COMPAT = Path(__file__).resolve().parent / "viewer" / "jetpack-compat.js"

# npm package -> {file in the package: name under vendor/}
NPM_FILES = {
    "d3@7.9.0": {"package/dist/d3.min.js": "d3.min.js"},
    "d3-collection@1.0.7": {"package/dist/d3-collection.min.js": "d3-collection.min.js"},
    "d3-jetpack@2.3.0": {"package/build/d3-jetpack.cjs": "d3-jetpack.js"},
    "dagre@0.8.5": {"package/dist/dagre.min.js": "dagre.min.js"},
    "pako@2.1.0": {"package/dist/pako.min.js": "pako.min.js"},
}
CDN = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/"
LIBS = ("<script src='./vendor/d3.min.js'></script>\n<script src='./vendor/d3-collection.min.js'></script>\n"
        "<script src='./vendor/d3-jetpack.js'></script>\n<script src='./vendor/jetpack-compat.js'></script>\n")

# (file under the assets, text circuit-tracer has, text the offline copy has); each must occur once.
PATCHES = (
    ("index.html", f"<script src='{CDN}hotserver-client-ws.js'></script>\n", ""),
    ("index.html", f"<script src='{CDN}d3.js'></script>\n", LIBS),
    ("index.html", f"<script src='{CDN}jetpack_2024-07-20.js'></script>\n", ""),
    ("index.html", f"<script src='{CDN}npy_v0.js'></script>\n", ""),
    ("index.html", "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js", "./vendor/dagre.min.js"),
    ("index.html", "https://unpkg.com/pako@2.1.0/dist/pako.min.js", "./vendor/pako.min.js"),
    # feature files from this server, not the CDN or the Hugging Face hub
    ("util.js", "path = path.replace('./features/', 'https://d1fk9w8oratjix.cloudfront.net/features/')",
     "path = path"),
    ("feature_examples/init-feature-examples.js", "fetch(hfUrl(scan, 'index.json.gz'), { method: 'HEAD' })",
     "fetch(`./features/${scan}/index.json.gz`, { method: 'HEAD' })"),
    # the UMD build would replace the global d3 with an empty object instead of extending it
    ("vendor/d3-jetpack.js", "factory(global.d3 = {}, global.d3,", "factory(global.d3, global.d3,"),
)


# What `trace serve` changes as it serves circuit-tracer's page (any copy: offline, installed or built before this
# table existed): the page puts graph fields (labels, node fields in tooltips, `vis_link`, layer names) into HTML
# unescaped, and (the last row) drops the graph file's supernodes. (file under the assets, text circuit-tracer
# has, changed text); a text not there is left alone.
ESCAPE_HELPERS = (
    "window.featuredbEscape = window.featuredbEscape || (s => String(s ?? '').replace(/[&<>\"'`]/g,\n"
    "  c => '&#' + c.charCodeAt(0) + ';'));\n"
    "window.featuredbUrl = window.featuredbUrl || (u => /^(https?:\\/\\/|\\.{0,2}\\/|#)/i.test(String(u ?? ''))\n"
    "  ? featuredbEscape(u) : '#');\n")
ESCAPES = (
    ("attribution_graph/util-cg.js", "(d.ppClerp || `F#${d.feature}`)",
     "featuredbEscape(d.ppClerp || `F#${d.feature}`)"),
    ("attribution_graph/util-cg.js", "!ev.metaKey ? d.ppClerp :", "!ev.metaKey ? featuredbEscape(d.ppClerp) :"),
    ("attribution_graph/util-cg.js", "`<div>${str}: <b>${val}</b></div>`",
     "`<div>${featuredbEscape(str)}: <b>${featuredbEscape(val)}</b></div>`"),
    ("attribution_graph/init-cg-feature-detail.js", 'href="${d.url}" target="_blank">${label}</a>',
     'href="${featuredbUrl(d.url)}" target="_blank">${featuredbEscape(label)}</a>'),
    ("attribution_graph/init-cg-feature-detail.js", "headerSel.html(`<b>${label}</b>`)",
     "headerSel.html(`<b>${featuredbEscape(label)}</b>`)"),
    ("feature_examples/init-feature-examples-list.js", "sel.html(`Feature ${visState.feature.featureIndex} failed",
     "sel.text(`Feature ${visState.feature.featureIndex} failed"),
    # not an escape: circuit-tracer's page starts the URL's supernodes as [] (truthy), so the graph file's
    # qParams.supernodes (trace label's proposals, a saved subgraph) were never drawn without a ?supernodes= URL
    ("attribution_graph/init-cg.js", "if (urlSupernodes) visState.supernodes = urlSupernodes",
     "if (urlSupernodes.length) visState.supernodes = urlSupernodes"),
)
ESCAPED_FILES = frozenset(rel for rel, _, _ in ESCAPES)


def escaped_asset(text: str, rel: str) -> str:
    """`text` of the page's file `rel` with every ESCAPES change for it made (each occurrence) and the helpers first."""
    changes = [(old, new) for f, old, new in ESCAPES if f == rel]
    if not changes:
        return text
    for old, new in changes:
        text = text.replace(old, new)
    return ESCAPE_HELPERS + text


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise BadInputError(f"{what}: {cmd[0]} is not installed") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise BadInputError(f"{what} failed: {last[-1] if last else 'exit ' + str(done.returncode)}")


def fetch_wheel(work: Path) -> Path:
    """circuit-tracer's wheel from the package index (no dependencies: only its frontend files are used)."""
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
          CIRCUIT_TRACER, "-d", str(work)], work, f"pip download {CIRCUIT_TRACER}")
    wheels = sorted(work.glob("circuit_tracer-*.whl"))
    if not wheels:
        raise BadInputError(f"pip download {CIRCUIT_TRACER} gave no wheel")
    return wheels[0]


def fetch_npm_files(work: Path, vendor: Path) -> None:
    """The JS libraries circuit-tracer's page loads from CDNs, from the npm registry, into `vendor`."""
    _run(["npm", "pack", "--silent", *NPM_FILES], work, "npm pack " + " ".join(NPM_FILES))
    for spec, files in NPM_FILES.items():
        name, version = spec.rsplit("@", 1)
        tgz = work / f"{name}-{version}.tgz"
        with tarfile.open(tgz) as tar:
            for member, target in files.items():
                data = tar.extractfile(member)
                if data is None:
                    raise BadInputError(f"{tgz.name}: no {member}")
                (vendor / target).write_bytes(data.read())


def apply_patches(site: Path) -> None:
    """Rewrite the page's CDN and hub URLs to local ones; a text that is not there exactly once is an error."""
    for rel, old, new in PATCHES:
        path = site / rel
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise BadInputError(f"{path}: expected text not found once ({old[:60]!r}); "
                                f"is this circuit-tracer's {CIRCUIT_TRACER.split('==')[1]} frontend?")
        path.write_text(text.replace(old, new), encoding="utf-8")


def prepare_offline_frontend(out: str | Path = DEFAULT_DIR) -> Path:
    """Build `out/site` (the page to serve) and `out/circuit_tracer` (the wheel's frontend package); return site."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="ct-frontend-") as tmp:
        work = Path(tmp)
        staged = work / "out"
        wheel = fetch_wheel(work)
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(ASSETS_IN_WHEEL) and not name.endswith("/"):
                    rel = name[len(ASSETS_IN_WHEEL):]
                    target = staged / ("site/" + rel[len("assets/"):] if rel.startswith("assets/")
                                       else "circuit_tracer/frontend/" + rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
        site = staged / "site"
        if not (site / "index.html").exists():
            raise BadInputError(f"{wheel.name}: no frontend assets in the wheel")
        (site / "vendor").mkdir()
        fetch_npm_files(work, site / "vendor")
        shutil.copyfile(COMPAT, site / "vendor" / COMPAT.name)
        apply_patches(site)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(out))
    return out / "site"


def offline_frontend(folder: str | Path = DEFAULT_DIR) -> Path | None:
    """The prepared page folder under `folder`, if `trace frontend` has built it."""
    site = Path(folder) / "site"
    return site if (site / "index.html").exists() and (site / "vendor" / COMPAT.name).exists() else None


def describe(site: Path) -> str:
    """One line on what a prepared folder holds (for the CLI)."""
    vendor = sorted(p.name for p in (site / "vendor").iterdir())
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    return f"{site} ({size / 1e6:.1f} MB; vendor: {', '.join(vendor)})"

