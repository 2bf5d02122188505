"""Rendering of a report's content blocks as GitHub Markdown and as one self-contained HTML page.

A block is a small tuple (heading, paragraph, table, key-value cards, figure) built by
``stage1.report``; this module only turns a list of them into text, so the metrics code and the
presentation stay in separate files.
"""

from __future__ import annotations

import base64
import html
import re


def to_markdown(title: str, blocks: list) -> str:
    """GitHub-flavoured Markdown; figures link the PNGs next to report.md."""

    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [f"# {title}", ""]
    for kind, *a in blocks:
        if kind == "h2":
            out += [f"## {a[0]}", ""]
        elif kind == "p":
            out += [a[0], ""]
        elif kind == "note":
            out += [f"_{a[0]}_", ""]
        elif kind == "cards":
            out += [
                row(k for k, *_ in a[0]),
                row("---" for _ in a[0]),
                row(f"**{v}** {s}" for _, v, s, _ in a[0]),
                "",
            ]
        elif kind in ("table", "kv"):
            header, rows = (a[0], a[1]) if kind == "table" else (["", ""], a[0])
            out += [row(header), row("---" for _ in header), *map(row, rows), ""]
        elif kind == "figure":
            out += [f"![{a[0]}]({a[0]}.png)", "", f"_{a[1]}_", ""]
        elif kind == "pre":
            out += [
                f"<details><summary>{a[0]}</summary>",
                "",
                "```json",
                a[1],
                "```",
                "",
                "</details>",
                "",
            ]
    return "\n".join(out)


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:#1f2328;max-width:1180px;margin:2em auto;padding:0 1.2em}
h1{font-size:1.6em;margin:0 0 .2em}
h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d8dee4;padding-bottom:.25em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d8dee4;padding:.3em .75em;text-align:left;vertical-align:top}
th{background:#f3f5f8}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv td:first-child{color:#57606a;white-space:nowrap}
.sub{color:#57606a}.note{color:#57606a;font-size:.88em}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:.8em 0}
.card{border:1px solid #d8dee4;border-radius:8px;padding:.6em 1.1em;min-width:11em}
.card .k{color:#57606a;font-size:.85em}.card .v{font-size:1.6em;font-weight:600}
.card .s{color:#57606a;font-size:.85em}.card.warn{border-color:#cf222e;background:#fff5f5}
.card.warn .s{color:#cf222e;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:.5em 0;flex:1 1 100%}figure.half{flex:1 1 45%;max-width:49%}
figure img{width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.88em}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.82em;max-height:32em}
"""
_NUM = re.compile(r"^-?\d+(\.\d+)?(e-?\d+)?$")


def to_html(title: str, blocks: list, images: dict[str, bytes]) -> str:
    """One self-contained page: inline CSS, PNGs as base64 data URIs, no scripts or links."""
    esc = html.escape

    def table(header, rows, cls=""):
        head = (
            ""
            if header is None
            else ("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>")
        )
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="num">{esc(c)}</td>'
                if _NUM.match(str(c))
                else f"<td>{esc(str(c))}</td>"
                for c in r
            )
            + "</tr>"
            for r in rows
        )
        return f"<table{cls}>{head}<tbody>{body}</tbody></table>"

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    in_figs = False
    for i, (kind, *a) in enumerate(blocks):
        if kind == "figure" and not in_figs:
            out.append('<div class="figs">')
        elif kind != "figure" and in_figs:
            out.append("</div>")
        in_figs = kind == "figure"
        if kind == "h2":
            out.append(f"<h2>{esc(a[0])}</h2>")
        elif kind == "p":
            out.append(f'<p class="sub">{esc(a[0])}</p>' if i == 0 else f"<p>{esc(a[0])}</p>")
        elif kind == "note":
            out.append(f'<p class="note">{esc(a[0])}</p>')
        elif kind == "cards":
            out.append(
                '<div class="cards">'
                + "".join(
                    f'<div class="card{" warn" if w else ""}"><div class="k">{esc(k)}</div>'
                    f'<div class="v">{esc(v)}</div><div class="s">{esc(s)}</div></div>'
                    for k, v, s, w in a[0]
                )
                + "</div>"
            )
        elif kind == "table":
            out.append(table(a[0], a[1]))
        elif kind == "kv":
            out.append(table(None, a[0], ' class="kv"'))
        elif kind == "figure":
            data = base64.b64encode(images[a[0]]).decode("ascii")
            cls = "" if a[2] else ' class="half"'
            out.append(
                f'<figure{cls}><img alt="{esc(a[0])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(a[1])}</figcaption></figure>"
            )
        elif kind == "pre":
            out.append(f"<details><summary>{esc(a[0])}</summary><pre>{esc(a[1])}</pre></details>")
    if in_figs:
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
