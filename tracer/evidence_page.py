"""The supernode evidence of one graph as a page a researcher reads: each proposal's Δp against random sets."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 20px; margin: 0 0 4px; } p.sub { color: #555; margin: 0 0 16px; }
table { border-collapse: collapse; width: 100%; } th, td { padding: 6px 8px; border-bottom: 1px solid #ddd;
  text-align: left; vertical-align: top; } th { background: #f4f4f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { position: relative; height: 14px; width: 220px; background: #f1f1f1; }
.bar span { position: absolute; top: 0; height: 14px; }
.bar .effect { background: #3b6fd8; } .bar .random { background: rgba(120,120,120,.45); }
.bar .zero { position: absolute; left: 50%; top: -2px; width: 1px; height: 18px; background: #333; }
.yes { color: #16751c; font-weight: 600; } .no { color: #9b2c2c; font-weight: 600; }
code { background: #f4f4f4; padding: 0 3px; } .preds { color: #444; font-size: 13px; }
"""


def _token(tok: Any) -> str:
    return f"<code>{escape(repr(str(tok)))}</code>"


def _predictions(preds: list[Any]) -> str:
    return ", ".join(f"{_token(t)} {float(p):.2f}" for t, p in preds[:5])


def _bar(delta: float, mean: float, sd: float, scale: float) -> str:
    """Δp as a bar from the middle (left: the target got less likely), the random band mean ± sd either side."""
    def pct(x: float) -> float:
        return max(0.0, min(100.0, 50 + 50 * x / scale))
    lo, hi = sorted((pct(0.0), pct(delta)))
    band_lo, band_hi = pct(-(mean + sd)), pct(mean + sd)
    return (f'<div class="bar" title="Δp {delta:+.4f}; random |Δp| {mean:.4f} ± {sd:.4f}">'
            f'<span class="random" style="left:{band_lo:.1f}%;width:{band_hi - band_lo:.1f}%"></span>'
            f'<span class="effect" style="left:{lo:.1f}%;width:{max(hi - lo, 0.5):.1f}%"></span>'
            '<span class="zero"></span></div>')


def _margin(margin: Any, sd: float) -> str:
    """The margin in sd; with random sets that all moved p alike (sd about 0) a number would mean nothing."""
    if margin is None:
        return "—"
    if sd < 1e-5:
        return "random sd ≈ 0"
    return f"{float(margin):+.1f}"


def evidence_page(slug: str, evidence: dict[str, Any]) -> str:
    """The HTML page for one graph's GRAPH.evidence.json (every string from the file escaped)."""
    sups = evidence.get("supernodes") or []
    scale = max([abs(float(s.get("delta_p") or 0)) for s in sups]
                + [float(s.get("random_mean") or 0) + float(s.get("random_sd") or 0) for s in sups] + [1e-6])
    rows = []
    for s in sups:
        beyond = bool(s.get("beyond_random"))
        margin = s.get("margin_sds")
        rows.append(
            "<tr>"
            f"<td>{escape(str(s.get('label', '')))}<br><span class=preds>{len(s.get('node_ids') or [])} features: "
            f"{escape(', '.join(map(str, (s.get('node_ids') or [])[:8])))}</span></td>"
            f"<td class=num>{float(s.get('delta_p') or 0):+.4f}</td>"
            f"<td>{_bar(float(s.get('delta_p') or 0), float(s.get('random_mean') or 0), float(s.get('random_sd') or 0), scale)}</td>"
            f"<td class=num>{float(s.get('random_mean') or 0):.4f} ± {float(s.get('random_sd') or 0):.4f} "
            f"(n={int(s.get('random_n') or 0)})</td>"
            f"<td class=num>{_margin(margin, float(s.get('random_sd') or 0))}</td>"
            f"<td class={'yes' if beyond else 'no'}>{'beyond random' if beyond else 'not beyond'}</td>"
            f"<td class=preds>{_predictions(s.get('top5_after') or [])}</td>"
            "</tr>")
    kept = sum(bool(s.get("beyond_random")) for s in sups)
    table = ("<table><thead><tr><th>supernode</th><th>Δp target</th><th>Δp (blue) vs random ± sd (grey)</th>"
             "<th>random |Δp| mean ± sd</th><th>margin (sd)</th><th>verdict</th><th>top-5 after zeroing</th>"
             "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>") if rows else "<p>No supernodes were proposed.</p>"
    link = escape(quote(slug, safe=""), quote=True)
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>Supernode evidence: {escape(slug)}</title><style>{STYLE}</style></head><body>"
            f"<h1>Supernode evidence: {escape(slug)}</h1>"
            f"<p class=sub>Prompt {_token(evidence.get('prompt', ''))}; target {_token(evidence.get('target', ''))} "
            f"at p = {float(evidence.get('p_target') or 0):.3f}. Top-5 as is: {_predictions(evidence.get('top5_before') or [])}."
            f"<br>Each supernode's features were zeroed (circuit-tracer feature intervention) and compared with "
            f"{int(evidence.get('n_random') or 0)} random sets of active features matched by layer and position; "
            f"a proposal is beyond random when |Δp| exceeds the random mean by {float(evidence.get('sds') or 0):g} sd "
            f"(one at or below every set of the first half cannot be, and is not run against the rest). "
            f"{kept} of {len(sups)} beyond random; computed in {float(evidence.get('seconds') or 0):.1f} s.</p>"
            f"{table}<p class=sub><a href='/index.html?slug={link}'>back to the graph</a> · "
            f"<a href='/evidence/{link}.json'>JSON</a></p></body></html>")
