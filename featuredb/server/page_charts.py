"""What the feature page draws: tokens coloured by activation, histograms as SVG bars, logit bars.

Everything is drawn on the server as HTML and inline SVG, so a page needs no charting library and no script.
"""

from __future__ import annotations

import math
from typing import Any

from featuredb.server.page_layout import esc

BEFORE, AFTER = 24, 8  # tokens shown either side of an example's peak (the rest is folded as "…")


def shown_token(token: Any) -> str:
    """A token as text a reader can see: newlines and tabs made visible, nothing else changed."""
    return str(token if token is not None else "").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def token_label(token: Any) -> str:
    """A token standing alone (a chip, a logit): as shown_token, and a token of spaces only shown as "␣"s."""
    text = shown_token(token)
    return text.replace(" ", "␣") if text and not text.strip() else text


def _number(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return v + 0.0 if math.isfinite(v) and v != 0 else 0.0  # no "-0.000"


def example_html(tokens: list[Any], values: list[Any], scale: float, peak: int | None = None, *,
                 before: int = BEFORE, after: int = AFTER) -> str:
    """One example: each token's background as strong as its activation relative to `scale` (the feature's max),
    its value in the tooltip; a window around the peak, with what is cut marked "…"."""
    n = len(tokens)
    vals = [_number(v) for v in values[:n]] + [0.0] * max(0, n - len(values))
    if peak is None or not 0 <= peak < n:
        peak = max(range(n), key=vals.__getitem__) if n else 0
    lo, hi = max(0, peak - before), min(n, peak + after + 1)
    scale = scale if scale > 0 else max(vals, default=0.0) or 1.0
    parts = ['<span class="cut">…</span>'] if lo > 0 else []
    for i in range(lo, hi):
        v = vals[i]
        alpha = min(1.0, max(0.0, v / scale))
        style = f' style="background:rgba(var(--act),{alpha:.2f})"' if alpha > 0.01 else ""
        cls = "t peak" if i == peak else "t"
        parts.append(f'<span class="{cls}"{style} title="{v:.3f}">{esc(shown_token(tokens[i]))}</span>')
    if hi < n:
        parts.append('<span class="cut">…</span>')
    return "".join(parts)


def histogram_svg(heights: list[Any], values: list[Any], *, label: str, width: int = 340, height: int = 110,
                  color: str = "#2f7d4f", log_x: bool = False) -> str:
    """Bars for a histogram (Neuronpedia's *_hist_data_bar_heights / _values), the x range under it; each bar's
    value and count in its tooltip. An empty histogram is said in words."""
    h = [_number(x) for x in heights]
    v = [_number(x) for x in values][:len(h)]
    if not h or max(h) <= 0:
        return f'<p class="muted small">No {esc(label)} recorded.</p>'
    first = next(i for i, x in enumerate(h) if x > 0)
    last = len(h) - 1 - next(i for i, x in enumerate(reversed(h)) if x > 0)
    v = v[first:last + 1] if len(v) == len(h) else []
    h = h[first:last + 1]
    top, n = max(h), len(h)
    plot_h = height - 18
    bar_w = width / n
    bars = []
    for i, x in enumerate(h):
        bh = 0 if x <= 0 else max(1.0, plot_h * x / top)
        at = f"{v[i]:.3g}" if i < len(v) else str(i)
        bars.append(f'<rect x="{i * bar_w:.2f}" y="{plot_h - bh:.2f}" width="{max(bar_w - 1, 0.8):.2f}" '
                    f'height="{bh:.2f}" fill="{color}"><title>{esc(at)}: {x:,.0f}</title></rect>')
    left = f"{v[0]:.3g}" if v else ""
    right = f"{v[-1]:.3g}" if v else ""
    scale_note = " (log scale)" if log_x else ""
    return (f'<svg role="img" aria-label="{esc(label)}" viewBox="0 0 {width} {height}" width="100%" '
            f'class="hist" data-bars="{n}"><title>{esc(label)}</title>{"".join(bars)}'
            f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#b9c0cc"/>'
            f'<text x="0" y="{height - 4}">{esc(left)}</text>'
            f'<text x="{width}" y="{height - 4}" text-anchor="end">{esc(right)}{scale_note}</text></svg>')


def logit_list(tokens: list[Any], values: list[Any], kind: str) -> str:
    """Top (kind "pos") or bottom ("neg") logits: the token and a bar as long as its share of the largest."""
    pairs = [(t, _number(v)) for t, v in zip(tokens or [], values or [])]
    if not pairs:
        return '<p class="muted small">none recorded</p>'
    top = max(abs(v) for _, v in pairs) or 1.0
    color = "37,99,235" if kind == "pos" else "220,38,38"
    rows = []
    for tok, v in pairs:
        width = 100 * abs(v) / top
        rows.append(f'<div class="logit {kind}"><span class="tok">{esc(token_label(tok))}</span>'
                    f'<span class="bar" style="background:linear-gradient(90deg,rgba({color},.55) {width:.0f}%,'
                    f'transparent {width:.0f}%)"></span><span class="v num">{v:+.2f}</span></div>')
    return "".join(rows)
