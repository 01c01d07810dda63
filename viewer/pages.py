"""Server-rendered pages for clinicians: plain HTML and CSS, readable on a ward PC and a tablet,
Norwegian (bokmål) by default, English with `?lang=en`."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse

LABELS = {
    "nb": {
        "title": "Nøkkelbilder",
        "born": "født",
        "none": "Ingen undersøkelser med nøkkelfunn.",
        "no_keys": "Ingen nøkkelbilder er markert.",
        "finding": "Funn",
        "open": "Åpne hele undersøkelsen",
        "for": "Vist for",
        "error": "Kan ikke vise bildene",
    },
    "en": {
        "title": "Key images",
        "born": "born",
        "none": "No studies with key findings.",
        "no_keys": "No key images are marked.",
        "finding": "Finding",
        "open": "Open the full study",
        "for": "Shown to",
        "error": "The images cannot be shown",
    },
}
STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#111;color:#eee}
header{padding:.8rem 1rem;background:#222;display:flex;flex-wrap:wrap;gap:1rem;align-items:baseline}
h1{font-size:1.2rem;margin:0} .who{color:#aaa;font-size:.9rem}
section{padding:1rem;border-bottom:1px solid #333}
h2{font-size:1.05rem;margin:0 0 .5rem} .finding{white-space:pre-wrap;max-width:60rem}
.keys{display:flex;flex-wrap:wrap;gap:.8rem;margin:.6rem 0}
figure{margin:0} figure img{max-width:min(100%,640px);height:auto;background:#000;display:block}
figcaption{font-size:.85rem;color:#bbb} a{color:#8cf}
.error{padding:2rem;font-size:1.1rem} .detail{color:#aaa;font-size:.85rem}
"""


class LinkError(Exception):
    """An EPR link that cannot be honoured; the messages are for the clinician."""

    def __init__(self, nb: str, en: str) -> None:
        super().__init__(en)
        self.messages = {"nb": nb, "en": en}


def lang_of(lang: str) -> str:
    return lang if lang in LABELS else "nb"


def _page(title: str, body: str, lang: str) -> str:
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


# What a clinician is told when a launch (IHE IID) fails, by status; the detail follows.
PROBLEMS = {
    400: (
        "Forespørselen er ufullstendig eller ugyldig.",
        "The request is incomplete or not valid.",
    ),
    401: ("Du må være logget inn.", "You need to be signed in."),
    403: ("Du har ikke tilgang til disse bildene.", "You may not see these images."),
    404: ("Finner ikke pasienten eller undersøkelsen.", "No such patient or study."),
}


def error_page(
    lang: str, message: str, status: int, detail: str = "", headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """The error page every clinician page shows: what went wrong, then the technical detail."""
    t = LABELS[lang]
    more = f'<p class="detail">{escape(detail)}</p>' if detail else ""
    body = f'<div class="error"><h1>{t["error"]}</h1><p>{escape(message)}</p>{more}</div>'
    return HTMLResponse(_page(t["error"], body, lang), status_code=status, headers=headers)


async def link_error_page(request: Request, exc: Exception) -> HTMLResponse:
    lang = lang_of(request.query_params.get("lang", "nb"))
    assert isinstance(exc, LinkError)
    return error_page(lang, exc.messages[lang], 401)


def request_error_page(request: Request, exc: HTTPException) -> HTMLResponse:
    """A refused browser launch as a page with the refusal's status (and its headers)."""
    lang = lang_of(request.query_params.get("lang", "nb"))
    nb, en = PROBLEMS.get(
        exc.status_code, ("Bildene kan ikke vises.", "The images cannot be shown.")
    )
    message = nb if lang == "nb" else en
    return error_page(lang, message, exc.status_code, str(exc.detail), exc.headers)


def _date(yyyymmdd: str) -> str:
    d = yyyymmdd
    return f"{d[6:8]}.{d[4:6]}.{d[0:4]}" if len(d) == 8 else d


def key_images(patient: Any, studies: list[Any], lang: str, clinician: str, base: str) -> str:
    """The EPR's view of a patient: newest study first, finding text, the key images."""
    lang = lang_of(lang)
    t = LABELS[lang]
    head = (
        f"<header><h1>{escape(patient.name.replace('^', ' '))}</h1>"
        f"<span>{escape(patient.patient_id)}, {t['born']} {escape(_date(patient.birth_date))}"
        f'</span><span class="who">{t["for"]} {escape(clinician)}</span></header>'
    )
    parts = [head]
    if not studies:
        parts.append(f"<section><p>{t['none']}</p></section>")
    for st in studies:
        figures = "".join(
            f'<figure><img src="{escape(k.image_url)}" alt="{escape(k.title)}"'
            f' data-sop="{escape(k.sop_uid)}"><figcaption>{escape(k.title)}</figcaption></figure>'
            for k in st.key_images
        )
        parts.append(
            "<section>"
            f"<h2>{escape(_date(st.date))} {escape(', '.join(st.modalities))} "
            f"{escape(st.description)}</h2>"
            + (
                f'<p class="finding"><b>{t["finding"]}:</b> {escape(st.finding_text)}</p>'
                if st.finding_text
                else ""
            )
            + (f'<div class="keys">{figures}</div>' if figures else f"<p>{t['no_keys']}</p>")
            + f'<p><a class="full" href="{escape(base)}/studies/{escape(st.study_uid)}'
            f'?lang={lang}">{t["open"]}</a></p>' + "</section>"
        )
    return _page(t["title"], "".join(parts), lang)


VIEWER_LABELS = {
    "nb": {
        "title": "Undersøkelse",
        "series": "Serier",
        "window": "Vindu",
        "default": "Fra bildet",
        "image": "Bilde",
        "frame": "Ramme",
        "play": "Spill av",
        "fit": "Tilpass",
        "mark": "Marker som nøkkelbilde",
        "marked": "Markert som nøkkelbilde",
        "help": "Rull med hjul, piltaster eller glider. Ctrl+hjul zoomer, dra for å flytte.",
    },
    "en": {
        "title": "Study",
        "series": "Series",
        "window": "Window",
        "default": "From the image",
        "image": "Image",
        "frame": "Frame",
        "play": "Play",
        "fit": "Fit",
        "mark": "Mark as key image",
        "marked": "Marked as key image",
        "help": "Scroll with the wheel, arrow keys or slider. Ctrl+wheel zooms, drag to pan.",
    },
}
PRESET_LABELS = {
    "nb": {
        "soft-tissue": "Bløtvev",
        "lung": "Lunge",
        "bone": "Skjelett",
        "brain": "Hjerne",
        "abdomen": "Abdomen",
        "mediastinum": "Mediastinum",
    },
    "en": {
        "soft-tissue": "Soft tissue",
        "lung": "Lung",
        "bone": "Bone",
        "brain": "Brain",
        "abdomen": "Abdomen",
        "mediastinum": "Mediastinum",
    },
}
VIEWER_STYLE = """
#app{display:flex;height:calc(100vh - 3rem)}
#series{width:9rem;overflow-y:auto;background:#1a1a1a;padding:.3rem}
#series button{display:block;width:100%;margin:0 0 .4rem;padding:.2rem;background:#222;color:#ddd;
 border:2px solid transparent;text-align:left;font-size:.75rem;cursor:pointer}
#series button.on{border-color:#8cf} #series img{width:100%;display:block;background:#000}
#main{flex:1;display:flex;flex-direction:column;min-width:0}
#bar{display:flex;flex-wrap:wrap;gap:.6rem;align-items:center;padding:.3rem .6rem;background:#222}
#stage{flex:1;overflow:hidden;position:relative;background:#000;touch-action:none}
#view{position:absolute;left:50%;top:50%;transform-origin:center;max-width:none;user-select:none}
#pos{min-width:7rem} .help{color:#999;font-size:.8rem}
"""
VIEWER_SCRIPT = (Path(__file__).parent / "static" / "study.js").read_text(encoding="utf-8")


def study_viewer(base: str, study_uid: str, lang: str) -> str:
    """The full-study viewer: series thumbnails, scrolling, window presets, zoom/pan, cine."""
    lang = lang_of(lang)
    t = VIEWER_LABELS[lang]
    options = f'<option value="">{t["default"]}</option>' + "".join(
        f'<option value="{k}">{escape(v)}</option>' for k, v in PRESET_LABELS[lang].items()
    )
    body = (
        f'<header><h1 id="heading">{t["title"]}</h1></header>'
        '<div id="app"><nav id="series" aria-label="' + t["series"] + '"></nav>'
        '<div id="main"><div id="bar">'
        f'<input id="slider" type="range" min="0" max="0" value="0" aria-label="{t["image"]}">'
        '<span id="pos"></span>'
        f'<label>{t["window"]} <select id="window">{options}</select></label>'
        f'<button id="fit">{t["fit"]}</button><button id="play" hidden>{t["play"]}</button>'
        f'<button id="mark" data-done="{escape(t["marked"])}">{escape(t["mark"])}</button>'
        '<span id="status" role="status"></span>'
        f'<span class="help">{escape(t["help"])}</span></div>'
        '<div id="stage"><img id="view" alt=""></div></div></div>'
        f"<script>{VIEWER_SCRIPT}</script>"
    )
    html = _page(t["title"], body, lang).replace(
        "<body>",
        f'<body data-base="{escape(base)}" data-study="{escape(study_uid)}" '
        f'data-image-label="{t["image"]}" data-frame-label="{t["frame"]}">',
    )
    return html.replace("</style>", VIEWER_STYLE + "</style>")
