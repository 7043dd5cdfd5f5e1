"""The frame every web page shares: style, header with the search box, escaping and the pages' HTTP headers.

Pages are built on the server from the store, so they load without any script or asset; the one inline script
(press "/" to search) is allowed by its hash in the Content-Security-Policy, and nothing else may run.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote

SEARCH_MODES = (("auto", "explanations (fused)"), ("text", "explanations (words)"),
                ("semantic", "explanations (meaning)"), ("token", "peak token"), ("logit", "output logit"),
                ("inference", "run this text"))

STYLE = """
:root { --ink: #1d2330; --muted: #5b6474; --line: #dde1e8; --soft: #f5f6f8; --link: #1a4fb4; --act: 16,150,72; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: var(--ink); }
a { color: var(--link); text-decoration: none; } a:hover, a:focus { text-decoration: underline; }
header { display: flex; gap: 16px; align-items: center; padding: 10px 20px; border-bottom: 1px solid var(--line);
  background: #fff; position: sticky; top: 0; z-index: 2; }
header .brand { font-weight: 700; color: var(--ink); font-size: 16px; }
header form { display: flex; gap: 6px; flex: 1; max-width: 980px; flex-wrap: wrap; align-items: center; }
details.filters { font-size: 12px; color: var(--muted); } details.filters summary { cursor: pointer; }
details.filters label { margin-left: 6px; } details.filters input { padding: 3px 5px; }
input[type=search], select, input[type=text] { font: inherit; padding: 6px 8px; border: 1px solid #b9c0cc;
  border-radius: 5px; background: #fff; }
input[type=search] { flex: 1; min-width: 160px; }
button { font: inherit; padding: 6px 12px; border: 1px solid #1a4fb4; background: #1a4fb4; color: #fff;
  border-radius: 5px; cursor: pointer; }
main { padding: 16px 20px 40px; max-width: 1400px; }
h1 { font-size: 20px; margin: 4px 0; } h2 { font-size: 15px; margin: 18px 0 8px; }
.muted { color: var(--muted); } .small { font-size: 12px; } .num { font-variant-numeric: tabular-nums; }
.error { border: 1px solid #e3b4b4; background: #fdf1f1; padding: 10px 12px; border-radius: 6px; }
.grid { display: grid; grid-template-columns: minmax(280px, 380px) 1fr; gap: 24px; align-items: start; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; margin-bottom: 14px; background: #fff; }
.card h2 { margin-top: 0; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 5px 6px;
  border-bottom: 1px solid var(--line); vertical-align: top; } th { background: var(--soft); font-weight: 600; }
.logits { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; } .logits > div { min-width: 0; }
.logit { display: flex; align-items: center; gap: 6px; font-size: 12px; margin: 2px 0; }
.logit .bar { flex: 1; min-width: 12px; height: 8px; }
.logit .tok { flex: 0 1 auto; max-width: 55%; overflow: hidden; text-overflow: ellipsis; white-space: pre;
  font-family: ui-monospace, monospace; padding: 0 3px; border-radius: 3px; }
.logit .v { margin-left: auto; color: var(--muted); }
.pos .tok { background: rgba(37, 99, 235, .14); } .neg .tok { background: rgba(220, 38, 38, .14); }
.example { font-family: ui-monospace, "SFMono-Regular", monospace; font-size: 12.5px; line-height: 1.9;
  padding: 4px 0; border-bottom: 1px dashed var(--line); white-space: pre-wrap; word-break: break-word; }
.example .max { color: var(--muted); font-family: system-ui, sans-serif; font-size: 11px; margin-right: 6px; }
.t { border-radius: 2px; padding: 1px 0; } .t.peak { outline: 1px solid rgb(var(--act)); }
.cut { color: #9aa1ad; }
.hit { padding: 8px 0; border-bottom: 1px solid var(--line); } .hit .id { font-family: ui-monospace, monospace; }
.hit .label { font-weight: 600; } .chip { display: inline-block; font-family: ui-monospace, monospace;
  font-size: 12px; background: var(--soft); border: 1px solid var(--line); border-radius: 4px; padding: 0 4px;
  margin: 1px 2px 1px 0; white-space: pre; }
.bins { margin: 10px 0 4px; font-size: 12px; color: var(--muted); }
svg text { font: 10px system-ui, sans-serif; fill: #5b6474; }
kbd { border: 1px solid #b9c0cc; border-bottom-width: 2px; border-radius: 3px; padding: 0 4px; font-size: 11px; }
"""

# Press "/" anywhere (outside a text field) to jump to the search box, as on Neuronpedia and GitHub.
SLASH_SCRIPT = ("document.addEventListener('keydown',e=>{const t=e.target.tagName;"
                "if(e.key==='/'&&t!=='INPUT'&&t!=='TEXTAREA'&&t!=='SELECT'){e.preventDefault();"
                "document.getElementById('q').focus();}});")
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SLASH_SCRIPT.encode()).digest()).decode()
PAGE_HEADERS = {
    "content-security-policy": ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                f"script-src 'sha256-{_SCRIPT_HASH}'; form-action 'self'; base-uri 'none'; "
                                "frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def esc(value: Any) -> str:
    """Text from the store, safe in HTML text and in quoted attributes."""
    return escape("" if value is None else str(value), quote=True)


def path_part(value: Any) -> str:
    """One URL path segment (a model or source id from the store), percent-encoded."""
    return quote(str(value), safe="")


def feature_url(model: str, source: str, index: int | str) -> str:
    """The feature page's path, Neuronpedia's shape: /{modelId}/{source}/{index}."""
    return f"/{path_part(model)}/{path_part(source)}/{path_part(index)}"


@dataclass
class SearchForm:
    """What the search box holds: the query, its mode and the filters (as typed, checked by the search)."""

    q: str = ""
    mode: str = "auto"
    model: str = ""
    layers: str = ""  # "3-7" or "5"
    max_density: str = ""  # a fraction, e.g. 0.01
    limit: int = 30

    @property
    def filtered(self) -> bool:
        """True when a filter beyond the model is set."""
        return bool(self.layers or self.max_density)


def search_form(form: SearchForm, models: list[str] | None = None, inference: bool = True) -> str:
    """The header's search box: a GET form (Enter searches; every control is reachable by Tab), with the
    filters folded under "filters"."""
    modes = [(m, label) for m, label in SEARCH_MODES if inference or m != "inference"]
    options = "".join(f'<option value="{m}"{" selected" if m == form.mode else ""}>{esc(label)}</option>'
                      for m, label in modes)
    model_field = ""
    if models and len(models) > 1:
        model_field = ('<select name="model" aria-label="model"><option value="">every model</option>'
                       + "".join(f'<option value="{esc(m)}"{" selected" if m == form.model else ""}>{esc(m)}</option>'
                                 for m in models) + "</select>")
    elif form.model:
        model_field = f'<input type="hidden" name="model" value="{esc(form.model)}">'
    filters = (f'<details class="filters"{" open" if form.filtered else ""}><summary>filters</summary>'
               f'<label>layers <input type="text" name="layers" value="{esc(form.layers)}" placeholder="e.g. 10-20" '
               f'size="7" maxlength="20"></label> <label>max density <input type="text" name="max_density" '
               f'value="{esc(form.max_density)}" placeholder="e.g. 0.01" size="7" maxlength="20"></label></details>')
    return (f'<form action="/search" method="get" role="search">'
            f'<input type="search" id="q" name="q" value="{esc(visible(form.q))}" '
            f'placeholder="Search features (press /)" aria-label="search query" autocomplete="off" maxlength="1000">'
            f'<select name="mode" aria-label="search mode">{options}</select>{model_field}'
            f'<button type="submit">Search</button>{filters}</form>')


def visible(text: str) -> str:
    """Text from a request made printable (control characters dropped) before it is shown."""
    return "".join(c for c in text if c.isprintable() or c in " \t")


def density_text(density: float | None) -> str:
    """A density (fraction of tokens) as a percentage, the same way on every page."""
    if density is None:
        return "unknown"
    return f"{100 * float(density):.3g}%"


def page(title: str, body: str, *, form: SearchForm | None = None, models: list[str] | None = None,
         autofocus: bool = False, inference: bool = True) -> str:
    """A whole HTML page: header with the search form, then `body` (already escaped)."""
    box = search_form(form or SearchForm(), models, inference)
    if autofocus:
        box = box.replace('id="q"', 'id="q" autofocus', 1)
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(visible(title))} · featuredb</title><style>{STYLE}</style></head><body>"
            f'<header><a class="brand" href="/search">featuredb</a>{box}</header>'
            f"<main>{body}</main><script>{SLASH_SCRIPT}</script></body></html>")
