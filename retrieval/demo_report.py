"""The demo's report page: one self-contained HTML file beside the media it links to (relative paths),
so that it opens from disk in any browser, without a server."""

from __future__ import annotations

from html import escape
from urllib.parse import quote

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1rem; color: #1d1d1f; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.1rem; margin: 2rem 0 .4rem; }
.meta { color: #555; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: .8rem; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .5rem; background: #fafafa; }
.card.hit { border-color: #2e7d32; box-shadow: inset 0 0 0 1px #2e7d32; }
.card.miss { border-color: #c62828; }
.card img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eee; border-radius: 4px; }
.card audio, .query audio { width: 100%; }
.score { font-variant-numeric: tabular-nums; font-weight: 600; }
.badge { float: right; font-weight: 700; }
.hit .badge { color: #2e7d32; } .miss .badge { color: #c62828; }
.note { background: #fff4e5; border-left: 4px solid #ef6c00; padding: .3rem .6rem; }
.name { font-size: .8rem; color: #444; overflow-wrap: anywhere; }
.decision.none { color: #c62828; }
.card.generated { max-width: 220px; border: 2px dashed #c62828; margin-bottom: .8rem; }
@media (max-width: 500px) { .grid { grid-template-columns: repeat(2, 1fr); } }
"""


def _media(path: str, modality: str, label: str) -> str:
    src = escape(quote(path))
    if modality == "image":
        return f'<img src="{src}" alt="{escape(label)}" loading="lazy">'
    return f'<audio controls preload="none" src="{src}" aria-label="{escape(label)}"></audio>'


def _answer(answer) -> str:
    title = f"“{escape(answer.query)}”" if answer.kind == "text" else f"a sound of “{escape(answer.query)}”"
    parts = [f'<section><h2>{escape(answer.kind)} → {escape(answer.target)}: {title}</h2>']
    if answer.query_file:
        parts.append(f'<div class="query">query sound: {_media(answer.query_file, "audio", answer.query)}</div>')
    right = sum(hit.correct for hit in answer.hits)
    if not answer.present:
        parts.append('<p class="note">This concept is deliberately absent from the collection: no result can '
                     'be right. Compare the scores with those of the queries above.</p>')
    if answer.match is not None:
        verdict = "match" if answer.match else "no good match"
        parts.append(f'<p class="decision {"" if answer.match else "none"}">Decision: <b>{verdict}</b> '
                     f'(confidence {answer.confidence:.2f})</p>')
    if answer.generated_file:
        parts.append(f'<div class="card generated"><span class="score">Generated, not from the collection · '
                     f'similarity to the query {answer.generated_score:.2f}</span>'
                     f'{_media(answer.generated_file, "image", "generated: " + answer.query)}</div>')
    parts.append(f'<p class="meta">{right} of {len(answer.hits)} results show exactly this concept · '
                 f'answered in {answer.millis:.0f} ms</p><div class="grid">')
    for hit in answer.hits:
        verdict, mark = ("hit", "✓") if hit.correct else ("miss", "✗")
        parts.append(
            f'<div class="card {verdict}"><span class="badge" aria-label="{verdict}">{mark}</span>'
            f'<span class="score">#{hit.rank} · {hit.score:.3f}</span>{_media(hit.path, hit.modality, hit.concept)}'
            f'<div class="name">{escape(hit.concept)}</div></div>')
    parts.append("</div></section>")
    return "\n".join(parts)


def render_report(run) -> str:
    timing = ", ".join(f"{name} {value:.1f} s" for name, value in run.seconds.items())
    body = [
        "<h1>xmodal demo</h1>",
        f'<p class="meta">{run.images} images and {run.sounds} sounds indexed with the '
        f"<b>{escape(run.model)}</b> model; {timing}. Cards show rank and cosine score; ✓ marks a result that "
        "shows exactly the query's concept (size, colour, shape and background).</p>",
        *(_answer(answer) for answer in run.answers),
    ]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>xmodal demo</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run) -> None:
    (run.out / "report.html").write_text(render_report(run), encoding="utf-8")
