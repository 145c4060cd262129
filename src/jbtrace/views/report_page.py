"""The report page: a jinja2 template with autoescape, plotly.js and the page's script inline.

Both scripts are allowed by their hashes in the Content-Security-Policy, and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources

from jbtrace.views.report_maps import MAX_ATTENTION, MAX_CELLS, MAX_COLUMNS

# Unicode controls that reorder text (bidirectional overrides, embeddings, isolates and marks):
# shown as visible codes, so that a prompt cannot make the page read other than it is.
BIDI_CONTROLS = {
    cp: f"[U+{cp:04X}]"
    for cp in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def visible_controls(value):
    """Every text the template prints, with its bidirectional controls made visible (markup the
    page itself made, such as its scripts, is left alone)."""
    import markupsafe

    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return value.translate(BIDI_CONTROLS)
    return value


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jbtrace.views", "templates"),
        autoescape=True,
        finalize=visible_controls,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )
    env.policies["json.dumps_kwargs"] = {
        "sort_keys": False,
        "separators": (",", ":"),
        "allow_nan": False,
        "ensure_ascii": False,
    }
    return env


def _csp_hash(script: str) -> str:
    return (
        "'sha256-"
        + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
        + "'"
    )


def render(data: dict) -> str:
    """The page: jinja2 template with autoescape; plotly.js and the page's script inline, hashed
    in the CSP."""
    import plotly.offline

    plotly_js = plotly.offline.get_plotlyjs()
    own_js = (
        resources.files("jbtrace.views").joinpath("templates/report.js").read_text(encoding="utf-8")
    )
    css = (
        resources.files("jbtrace.views")
        .joinpath("templates/report.css")
        .read_text(encoding="utf-8")
    )
    for name, text in (("plotly.js", plotly_js), ("report.js", own_js)):
        if "</script" in text.lower():
            raise RuntimeError(f"{name} contains '</script' and cannot be inlined")
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_csp_hash(plotly_js)} {_csp_hash(own_js)}",
            # plotly sets style attributes and adds style elements at run time
            "style-src 'unsafe-inline'",
            # plotly draws heatmaps into a canvas and shows it as a data: image
            "img-src data: blob:",
            "connect-src 'none'",
            "font-src 'none'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )
    from markupsafe import Markup

    return (
        _env()
        .get_template("report.html.j2")
        .render(
            csp=csp,
            css=Markup(css),
            plotly_js=Markup(plotly_js),
            own_js=Markup(own_js),
            max_columns=MAX_COLUMNS,
            max_cells=f"{MAX_CELLS:,}",
            max_attention=MAX_ATTENTION,
            **data,
        )
    )
