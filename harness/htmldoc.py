"""Self-contained HTML documents built from a few block types, escaped by construction.

Every string given to a block is text: it is escaped (``html.escape``) when the document
is rendered, so a method's description that reads ``<script>…</script>`` shows as those
characters. There is no way to pass markup in; formatting comes from the types: inline
:class:`Strong` and :class:`Code` spans, and the blocks :class:`Heading`,
:class:`Paragraph`, :class:`BulletList`, :class:`Table`, :class:`Image` (PNG bytes inlined
as a ``data:`` URI), :class:`Preformatted`, :class:`Details` and :class:`Columns`. The page
loads nothing: no scripts, styles or images from files or the network, and a
Content-Security-Policy that forbids scripts.

Usage::

    from harness import htmldoc as h

    blocks = [h.Heading("moons"), h.Paragraph(["ranked by ", h.Code("w2"), "; best in bold"]),
              h.Table(["method", "w2"], [["icfm", h.Strong("0.12")], ["otcfm", "0.15"]], align="lr"),
              h.Image.from_file(Path("plot.png"), alt="w2 against NFE", caption="mean ± std over seeds")]
    text = h.document("few-step-2d", blocks)        # the whole page, a str
    h.write_document(Path("report.html"), "few-step-2d", blocks)

Two result sets side by side (``flowgauge compare --html``)::

    page = h.document("a vs b", [h.side_by_side("a", blocks_a, "b", blocks_b)])

:func:`harness.report.report_blocks` gives the blocks of one results directory, and
:func:`harness.report.write_html_comparison` writes two of them side by side.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Strong:
    """Bold text (a table's best value)."""

    text: str


@dataclass(frozen=True)
class Code:
    """Monospaced text (a command, a name from a spec)."""

    text: str


Span = str | Strong | Code
Text = Span | Sequence[Span]  # one span, or spans that follow each other


@dataclass(frozen=True)
class Heading:
    text: Text
    level: int = 2  # 1 to 6

    def __post_init__(self) -> None:
        if self.level not in range(1, 7):
            raise ValueError(f"heading level must be 1 to 6; got {self.level!r}")


@dataclass(frozen=True)
class Paragraph:
    text: Text


@dataclass(frozen=True)
class BulletList:
    items: Sequence[Text]


ALIGN = {"l": "left", "r": "right", "c": "center"}


@dataclass(frozen=True)
class Table:
    """A table from a header row and body rows of cells; ``align`` gives one of l, r, c per
    column (default: all left); ``cls`` is a CSS class name for the tests and the styles."""

    headers: Sequence[Text]
    rows: Sequence[Sequence[Text]]
    caption: Text | None = None
    align: str = ""
    cls: str = ""

    def __post_init__(self) -> None:
        bad = [row for row in self.rows if len(row) != len(self.headers)]
        if bad:
            raise ValueError(f"every row needs {len(self.headers)} cells, as the header; got {len(bad[0])}: {bad[0]!r}")
        if self.align and (len(self.align) != len(self.headers) or set(self.align) - set(ALIGN)):
            raise ValueError(f"align needs one of l, r, c per column ({len(self.headers)}); got {self.align!r}")
        _check_class(self.cls)


IMAGE_TYPES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff", "image/gif": b"GIF8"}


@dataclass(frozen=True)
class Image:
    """An image inlined as a ``data:`` URI (PNG, JPEG or GIF bytes; never SVG, which can
    carry scripts), with its alternative text and an optional caption."""

    data: bytes = field(repr=False)
    alt: str
    caption: Text | None = None
    mime: str = "image/png"

    def __post_init__(self) -> None:
        magic = IMAGE_TYPES.get(self.mime)
        if magic is None:
            raise ValueError(f"image type must be one of {', '.join(IMAGE_TYPES)}; got {self.mime!r}")
        if not self.data.startswith(magic):
            raise ValueError(f"image data is not {self.mime} (starts {self.data[:8]!r})")

    @classmethod
    def from_file(cls, path: Path, alt: str, caption: Text | None = None) -> Image:
        """The image in ``path`` (its type from the suffix: .png, .jpg, .jpeg or .gif). A
        PNG larger than ``PALETTE_ABOVE`` bytes is inlined as a 256-colour palette PNG
        (plots have few colours; a grid of many sample scatters shrank 8.7 MB -> 3.3 MB)."""
        mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}.get(path.suffix.lower(), "image/png")
        data = path.read_bytes()
        if mime == "image/png" and len(data) > PALETTE_ABOVE:
            data = palette_png(data)
        return cls(data, alt, caption, mime)


PALETTE_ABOVE = 1 << 20  # bytes


def palette_png(data: bytes) -> bytes:
    """``data`` (a PNG) re-encoded with an adaptive 256-colour palette, when that is smaller."""
    import io

    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as image:
        quantized = image.convert("RGB").quantize(colors=256, method=PILImage.Quantize.MEDIANCUT)
    out = io.BytesIO()
    quantized.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


@dataclass(frozen=True)
class Preformatted:
    """Text shown as is, in a monospaced block (a log, a spec)."""

    text: str


@dataclass(frozen=True)
class Details:
    """A block folded under a summary line that the reader clicks to open."""

    summary: Text
    body: Sequence[Block]
    open: bool = False


@dataclass(frozen=True)
class Columns:
    """Columns side by side, each a title and its blocks; wide tables scroll inside their
    column. Narrow windows stack them."""

    columns: Sequence[tuple[Text, Sequence[Block]]]


Block = Heading | Paragraph | BulletList | Table | Image | Preformatted | Details | Columns


def side_by_side(left_title: Text, left: Sequence[Block], right_title: Text, right: Sequence[Block]) -> Columns:
    """Two lists of blocks (two result sets' reports, say) in two columns."""
    return Columns([(left_title, list(left)), (right_title, list(right))])


def _check_class(name: str) -> None:
    if name and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise ValueError(f"a CSS class name is letters, digits, - and _; got {name!r}")


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


def render_text(text: Text | None) -> str:
    """Spans as HTML, every string escaped."""
    if text is None:
        return ""
    if isinstance(text, str):
        return _escape(text)
    if isinstance(text, Strong):
        return f"<strong>{_escape(text.text)}</strong>"
    if isinstance(text, Code):
        return f"<code>{_escape(text.text)}</code>"
    if isinstance(text, Sequence):
        return "".join(render_text(span) for span in text)
    raise TypeError(f"text must be a str, Strong, Code or a sequence of them; got {type(text).__name__}")


def plain_text(text: Text | None) -> str:
    """Spans as plain text (for an id, or a markdown rendering's caller)."""
    if text is None:
        return ""
    if isinstance(text, str):
        return text
    if isinstance(text, (Strong, Code)):
        return text.text
    return "".join(plain_text(span) for span in text)


def slug(text: Text) -> str:
    """An id for a heading: its text in lower case, runs of other characters as '-'."""
    return re.sub(r"[^a-z0-9]+", "-", plain_text(text).lower()).strip("-") or "section"


def render_block(block: Block, ids: dict[str, int] | None = None) -> str:
    """One block as HTML; ``ids`` counts heading ids already used in the page."""
    ids = {} if ids is None else ids
    if isinstance(block, Heading):
        base = slug(block.text)
        ids[base] = ids.get(base, 0) + 1
        anchor = base if ids[base] == 1 else f"{base}-{ids[base]}"
        return f'<h{block.level} id="{anchor}">{render_text(block.text)}</h{block.level}>'
    if isinstance(block, Paragraph):
        return f"<p>{render_text(block.text)}</p>"
    if isinstance(block, BulletList):
        return "<ul>\n" + "".join(f"<li>{render_text(item)}</li>\n" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        return _render_table(block)
    if isinstance(block, Image):
        data = base64.b64encode(block.data).decode("ascii")
        image = f'<img src="data:{block.mime};base64,{data}" alt="{_escape(block.alt)}">'
        caption = f"<figcaption>{render_text(block.caption)}</figcaption>" if block.caption is not None else ""
        return f"<figure>{image}{caption}</figure>"
    if isinstance(block, Preformatted):
        return f"<pre>{_escape(block.text)}</pre>"
    if isinstance(block, Details):
        body = "\n".join(render_block(b, ids) for b in block.body)
        return (f"<details{' open' if block.open else ''}><summary>{render_text(block.summary)}</summary>\n"
                f"{body}\n</details>")
    if isinstance(block, Columns):
        cells = "".join(f'<div class="column"><h2 class="column-title">{render_text(title)}</h2>\n'
                        + "\n".join(render_block(b, ids) for b in body) + "\n</div>\n"
                        for title, body in block.columns)
        return f'<div class="columns" style="--columns: {len(block.columns)}">\n{cells}</div>'
    raise TypeError(f"not a block: {type(block).__name__}")


def _render_table(table: Table) -> str:
    aligns = [ALIGN[a] for a in table.align] if table.align else ["left"] * len(table.headers)

    def cell(tag: str, text: Text, align: str) -> str:
        attribute = "" if align == "left" else f' class="{align}"'
        return f"<{tag}{attribute}>{render_text(text)}</{tag}>"

    head = "<tr>" + "".join(cell("th", h, a) for h, a in zip(table.headers, aligns)) + "</tr>"
    body = "\n".join("<tr>" + "".join(cell("td", c, a) for c, a in zip(row, aligns)) + "</tr>" for row in table.rows)
    caption = f"<caption>{render_text(table.caption)}</caption>" if table.caption is not None else ""
    cls = f' class="{table.cls}"' if table.cls else ""
    return (f'<div class="table-wrap"><table{cls}>{caption}\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>'
            "</table></div>")


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1d1d1f; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
.table-wrap { overflow-x: auto; margin: .6rem 0 1rem; }
table { border-collapse: collapse; font-size: 13px; }
caption { caption-side: top; text-align: left; color: #555; padding: .2rem 0; }
th, td { border: 1px solid #d6d6d6; padding: .2rem .5rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; } tbody tr:nth-child(even) { background: #fafafa; }
.right { text-align: right; font-variant-numeric: tabular-nums; } .center { text-align: center; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 13px; max-width: 60rem; }
details { margin: .6rem 0; } summary { cursor: pointer; font-weight: 600; }
.columns { display: grid; grid-template-columns: repeat(var(--columns), minmax(0, 1fr)); gap: 1.5rem; }
.column { min-width: 0; } .column-title { margin-top: 0; }
@media (max-width: 900px) { .columns { grid-template-columns: minmax(0, 1fr); } }
"""

# Nothing to load and nothing to run: inline styles and data: images only.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def document(title: str, blocks: Sequence[Block]) -> str:
    """A whole page: ``title`` (escaped) and the blocks, with the stylesheet inline."""
    ids: dict[str, int] = {}
    body = "\n".join(render_block(b, ids) for b in blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_document(path: Path, title: str, blocks: Sequence[Block]) -> Path:
    """Write :func:`document` to ``path`` atomically (a full disk is a StorageError naming it)."""
    from harness.results import write_atomic

    text = document(title, blocks)
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    return path
