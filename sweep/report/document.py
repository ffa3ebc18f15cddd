"""A tiny document model for the report, rendered once as Markdown and once as a self-contained HTML page (CSS
inline, figures embedded as base64), so both always say the same thing."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", items))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(("image", (path, caption)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, body in self.blocks:
            if kind == "heading":
                out += ["#" * body[0] + " " + body[1], ""]
            elif kind == "text":
                out += [body, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in body] + [""]
            elif kind == "table":
                out += [_markdown_table(body), ""]
            elif kind == "image":
                out += [f"![{body[1]}]({body[0].name})", ""]
        return "\n".join(out)

    def html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, body in self.blocks:
            if kind == "heading":
                parts.append(f"<h{body[0]}>{html.escape(body[1])}</h{body[0]}>")
            elif kind == "text":
                parts.append(f"<p>{_inline(body)}</p>")
            elif kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in body) + "</ul>")
            elif kind == "table":
                parts.append(_html_table(body))
            elif kind == "image":
                data = base64.b64encode(Path(body[0]).read_bytes()).decode()
                parts.append(f'<figure><img alt="{html.escape(body[1])}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{html.escape(body[1])}</figcaption></figure>")
        return PAGE.format(title=html.escape(self.title), body="\n".join(parts))


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_inline(str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` as HTML, the rest escaped."""
    pieces = html.escape(text).split("**")
    text = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(pieces))
    pieces = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 70rem;
       color: #1d1d1f; line-height: 1.45; padding: 0 1rem; }}
table {{ border-collapse: collapse; margin: 0.6rem 0 1.2rem; font-size: 0.86rem; }}
th, td {{ border: 1px solid #d0d4da; padding: 0.25rem 0.55rem; text-align: right; }}
th {{ background: #eef1f5; }} td:first-child, th:first-child {{ text-align: left; }}
tbody tr:nth-child(even) {{ background: #f8f9fb; }}
figure {{ display: inline-block; margin: 0.5rem 1rem 1rem 0; }} img {{ max-width: 100%; border: 1px solid #e3e6ea; }}
figcaption {{ font-size: 0.8rem; color: #555; }} h2 {{ border-bottom: 1px solid #e3e6ea; padding-bottom: 0.2rem; }}
</style>
<script>
window.addEventListener("load", () => {{
  const images = [...document.images];
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = images.length;
}});
</script>
</head><body>
{body}
</body></html>
"""
