"""Server-rendered HTML of the review desk: a grid of candidates, promotions, and the forms.

No build step and no template engine: each page is a function of plain data, every value
escaped. A few lines of JavaScript add the keyboard (k keep, x/r reject, arrows or j/n to
move) on top of forms that also work without it.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from charloop.stages.review.desk import Card, IterationView, scores_of

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2rem;background:#111;color:#eee}
a{color:#8cf} h1,h2{font-weight:600} .bar{display:flex;gap:1rem;align-items:center;flex-wrap:wrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:.7rem}
.card{border:3px solid #333;border-radius:8px;padding:.4rem;background:#1b1b1b;font-size:.8rem}
.card img{width:100%;image-rendering:pixelated;border-radius:4px}
.card.keep{border-color:#2a7} .card.reject{border-color:#c33;opacity:.6}
.card.current{outline:3px solid #fc3} .changed .verdict{font-weight:700;color:#fc3}
.side{display:flex;gap:1rem;align-items:flex-start;flex-wrap:wrap} table{border-collapse:collapse}
td,th{padding:.15rem .5rem;border-bottom:1px solid #333;text-align:left} .muted{color:#999}
.sheet{max-width:420px} .layout{display:flex;gap:1rem;align-items:flex-start}
.character{position:sticky;top:.5rem;width:230px;flex:none;background:#1b1b1b;padding:.5rem;
 border-radius:8px;font-size:.8rem;max-height:96vh;overflow:auto}
.character img{width:100px;image-rendering:pixelated;border-radius:4px}
.refs{display:flex;flex-wrap:wrap;gap:.3rem} .main{flex:1;min-width:0}
.nearest{display:flex;gap:.3rem;align-items:center} .nearest img{width:40px}
.traits{list-style:none;padding:0;margin:.2rem 0;font-size:.8rem} .traits .missed{color:#b00}
.traits .shown{color:#070} .character-traits .discovered{font-style:italic}
#compare{display:none;gap:1rem;background:#1b1b1b;padding:.5rem;border-radius:8px;margin:.5rem 0}
#compare.open{display:flex} #compare figure{margin:0} #compare img{width:256px;
 image-rendering:pixelated} .full{max-width:100%;image-rendering:pixelated}
"""

KEYS = """
const cards=[...document.querySelectorAll('.card')];let at=0;
function show(i){if(!cards.length)return;cards[at].classList.remove('current');
 at=Math.max(0,Math.min(cards.length-1,i));cards[at].classList.add('current');
 cards[at].scrollIntoView({block:'nearest'});}
function mark(card,v){card.querySelector('input.v').value=v;card.classList.remove('keep','reject');
 card.classList.add(v);card.classList.toggle('changed',v!==card.dataset.auto);
 card.querySelector('.verdict').textContent=v;}
cards.forEach((c,i)=>c.addEventListener('click',()=>show(i)));
document.addEventListener('keydown',e=>{if(e.target.tagName==='INPUT'||e.target.tagName==='TEXTAREA')return;
 const k=e.key.toLowerCase();
 if(k==='k'){mark(cards[at],'keep');show(at+1);}
 else if(k==='x'||k==='r'){mark(cards[at],'reject');show(at+1);}
 else if(k==='arrowright'||k==='j'||k==='n'){show(at+1);}
 else if(k==='arrowleft'||k==='p'){show(at-1);} else return; e.preventDefault();});
const slots=[];
function compare(card){const i=slots.indexOf(card);if(i>=0)slots.splice(i,1);else{
 slots.push(card);if(slots.length>2)slots.shift();}
 const box=document.getElementById('compare');box.innerHTML='';
 slots.forEach(c=>{const f=document.createElement('figure');f.className='compared';
  const img=document.createElement('img');img.src=c.querySelector('img').src;
  const cap=document.createElement('figcaption');cap.textContent=c.dataset.summary;
  f.append(img,cap);box.append(f);});
 box.classList.toggle('open',slots.length>0);}
document.querySelectorAll('.cmp').forEach(b=>b.addEventListener('click',e=>{
 e.stopPropagation();compare(b.closest('.card'));}));
document.addEventListener('keydown',e=>{if(e.key.toLowerCase()==='c'&&
 e.target.tagName!=='INPUT'){compare(cards[at]);e.preventDefault();}});
show(0);
"""


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def link(path: str, token: str | None, **query: str) -> str:
    """``path`` with the query (and the desk token, when one is set)."""
    params = {k: v for k, v in query.items() if v} | ({"token": token} if token else {})
    return escape(path + (f"?{urlencode(params)}" if params else ""))


def index(subject: str, iterations: list[tuple[int, str | None]], promotions: list[dict[str, Any]],
          token: str | None) -> str:  # fmt: skip
    rows = "".join(
        f"<tr><td><a href='{link(f'/iteration/{n}', token)}'>iteration {n}</a></td>"
        f"<td>{escape(f'reviewed by {who}') if who else 'not reviewed'}</td></tr>"
        for n, who in iterations
    )
    body = f"<h1>Review desk: {escape(subject)}</h1><h2>Iterations</h2><table>{rows}</table>"
    body += promotions_block(promotions, token)
    return page(f"{subject} review desk", body)


def promotions_block(promotions: list[dict[str, Any]], token: str | None) -> str:
    if not promotions:
        return "<h2>Promotions</h2><p class='muted'>No promotion is waiting for approval.</p>"
    parts = ["<h2>Promotions waiting for approval</h2>"]
    for item in promotions:
        metrics = sorted(set(item["metrics"]) | set(item["production"]))
        rows = "".join(
            f"<tr><td>{escape(m)}</td><td>{_num(item['metrics'].get(m))}</td>"
            f"<td>{_num(item['production'].get(m))}</td></tr>"
            for m in metrics
        )
        version = escape(str(item["version"]))
        parts.append(
            f"<h3>{escape(item['model'])} v{version}</h3><table><tr><th>metric</th>"
            f"<th>v{version}</th><th>production (v{escape(str(item['production_version']))})"
            f"</th></tr>{rows}</table>"
            f"<form method='post' action='{link(f'/promotions/{version}', token)}'>"
            "<input name='approver' placeholder='your name' required> "
            "<input name='reason' placeholder='reason'> "
            "<button name='decision' value='approve'>approve</button> "
            "<button name='decision' value='reject'>reject</button></form>"
        )
    return "".join(parts)


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def card_html(card: Card, iteration: int, token: str | None) -> str:
    scored = scores_of(card)
    scores = "".join(f"<div>{escape(k)}: {v}</div>" for k, v in scored.items())
    reasons = escape("; ".join(card.reasons)) or "-"
    src = link(f"/image/{iteration}/{card.file}", token)
    summary = f"{card.id}: {card.decision}; " + ", ".join(f"{k} {v}" for k, v in scored.items())
    nearest = ""
    if card.nearest_reference:
        ref = link(f"/reference/{card.nearest_reference}", token)
        nearest = (
            f"<div class='nearest' title='the reference the filter found closest'>"
            f"<img src='{ref}' alt='nearest reference'><span class='muted'>nearest: "
            f"{escape(card.nearest_reference)}</span></div>"
        )
    verdicts = ""
    if card.traits:
        verdicts = (
            "<ul class='traits' title='traits as the trait scorer read them'>"
            + "".join(
                f"<li class='{'shown' if ok else 'missed'}'>{'&#10003;' if ok else '&#10007;'} "
                f"{escape(trait)}</li>"
                for trait, ok in card.traits.items()
            )
            + "</ul>"
        )
    return (
        f"<div class='card {card.decision}' data-auto='{card.decision}' "
        f"data-summary='{escape(summary)}' id='card-{escape(card.id)}'>"
        f"<img src='{src}' alt='{escape(card.id)}'>"
        f"<div><b>{escape(card.id)}</b> <span class='verdict'>{card.decision}</span> "
        "<button type='button' class='cmp' title='compare (c)'>compare</button></div>"
        f"<div class='muted'>filter: {card.decision}; {reasons}</div>{scores}{verdicts}{nearest}"
        f"<div class='muted'>{escape(card.context_label)}</div>"
        f"<div class='muted' title='{escape(card.prompt)}'>{escape(card.prompt[:90])}</div>"
        f"<input class='v' type='hidden' name='verdict:{escape(card.id)}' value='{card.decision}'>"
        "</div>"
    )


def character_panel(view: IterationView, token: str | None) -> str:
    """The character the candidates must match, pinned beside the grid: its declared and
    discovered traits (with each one's pass rate in the kept set) and its references."""

    def item(trait: str, kind: str) -> str:
        rate = view.kept_traits.get(trait)
        kept = f" <span class='muted'>kept set {rate:.0%}</span>" if rate is not None else ""
        return f"<li class='{kind}'>{escape(trait)}{kept}</li>"

    traits = "".join(item(t, "declared") for t in view.traits) or "<li>none declared</li>"
    traits += "".join(item(t, "discovered") for t in view.discovered)
    refs = "".join(
        f"<img src='{link(f'/reference/{name}', token)}' alt='{escape(name)}' "
        f"title='{escape(name)}'>"
        for name in view.references
    )
    body = refs or "<p class='muted'>No reference images (character.references).</p>"
    note = " <span class='muted'>(declared; discovered on the references)</span>"
    return (
        "<aside class='character' id='references'><h3>The character</h3><b>Traits</b>"
        f"{note if view.discovered else ''}<ul class='character-traits'>{traits}</ul>"
        f"<b>References ({len(view.references)})</b><div class='refs'>{body}</div></aside>"
    )


def iteration_page(view: IterationView, subject: str, decision: str, context: str,
                   token: str | None, message: str = "") -> str:  # fmt: skip
    shown = [c for c in view.cards if (not decision or c.decision == decision)
             and (not context or c.context_label == context)]  # fmt: skip
    contexts = sorted({c.context_label for c in view.cards})
    options = "".join(
        f"<option{' selected' if c == context else ''}>{escape(c)}</option>" for c in contexts
    )
    decisions = "".join(
        f"<option{' selected' if d == decision else ''}>{d}</option>" for d in ("keep", "reject")
    )
    n = view.iteration
    kept = sum(c.decision == "keep" for c in view.cards)
    status = f"reviewed by {escape(view.reviewed_by)}" if view.reviewed_by else "not reviewed yet"
    filters = (
        "<form method='get' class='bar'>"
        + (f"<input type='hidden' name='token' value='{escape(token)}'>" if token else "")
        + f"<label>decision <select name='decision'><option value=''>all</option>{decisions}"
        f"</select></label><label>context <select name='context'><option value=''>all</option>"
        f"{options}</select></label><button>filter</button></form>"
    )
    side = ""
    if view.contact_sheet is not None:
        side += f"<img class='sheet' src='{link(f'/sheet/{n}', token)}' alt='contact sheet'>"
    if view.previous_metrics:
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:.4f}</td></tr>"
                       for k, v in sorted(view.previous_metrics.items()))  # fmt: skip
        side += f"<div><h3>Iteration {n - 1} evaluation</h3><table>{rows}</table></div>"
    if view.evaluation_sheet is not None:
        sheet = link(f"/evaluation/{n - 1}", token)
        side += (
            f"<details id='evaluation'><summary>Iteration {n - 1}'s evaluation contact sheet "
            f"(the LoRA these candidates came from, held-out contexts), full size</summary>"
            f"<img class='full' src='{sheet}' alt='evaluation contact sheet'></details>"
        )
    grid = "".join(card_html(c, n, token) for c in shown)
    body = (
        f"<div class='bar'><a href='{link('/', token)}'>desk</a><h1>{escape(subject)}: "
        f"iteration {n}</h1><span class='muted'>filter kept {kept} of {len(view.cards)}; "
        f"{status}</span></div>"
        + (f"<p id='message'>{escape(message)}</p>" if message else "")
        + f"{filters}<p class='muted'>Keys: k keep, x or r reject, arrows or j/n move, c "
        "compare (two at a time). Images you leave alone keep the filter's decision.</p>"
        f"<div class='side'>{side}</div><div id='compare'></div>"
        f"<div class='layout'>{character_panel(view, token)}<div class='main'>"
        f"<form method='post' id='review' action='{link(f'/iteration/{n}/review', token)}'>"
        f"<div class='grid'>{grid}</div><p class='bar'>"
        "<input name='reviewer' id='reviewer' placeholder='your name (recorded)' required> "
        "<input name='comment' id='comment' placeholder='comment'> "
        "<button id='submit'>submit review</button></p></form></div></div>"
        f"<script>{KEYS}</script>"
    )
    return page(f"{subject} iteration {n}", body)
