"""Text for LaTeX tables that compile under plain ``pdflatex`` with ``booktabs`` and no
other package: TeX's special characters escaped, and the Unicode that tables use (±, ≤,
σ, arrows, dashes) spelled as ASCII commands. Anything else outside ASCII is reduced to
its ASCII letters (é to e) or, failing that, to ``?``: the output is always ASCII."""

from __future__ import annotations

import unicodedata

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
            "|": r"$|$"}
_UNICODE = {"±": r"$\pm$", "−": r"$-$", "≤": r"$\le$", "≥": r"$\ge$", "≠": r"$\ne$", "≈": r"$\approx$",
            "×": r"$\times$", "·": r"$\cdot$", "√": r"$\surd$", "²": r"$^2$", "³": r"$^3$", "↓": r"$\downarrow$",
            "↑": r"$\uparrow$", "→": r"$\to$", "—": "---", "–": "--", "…": r"\dots{}", "’": "'", "‘": "`",
            "“": "``", "”": "''", "σ": r"$\sigma$", "δ": r"$\delta$", "ε": r"$\varepsilon$", "μ": r"$\mu$",
            "µ": r"$\mu$", "π": r"$\pi$", "θ": r"$\theta$", "λ": r"$\lambda$", "Δ": r"$\Delta$",
            "∞": r"$\infty$", "\u00a0": "~", "\u202f": r"\,", "\n": " ", "\r": " ", "\t": " "}


def escape(text: str) -> str:
    """``text`` as LaTeX source in ASCII, to be set in text mode."""
    out = []
    for ch in str(text):
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif ch in _UNICODE:
            out.append(_UNICODE[ch])
        elif ch.isascii():
            out.append(ch)
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(plain if plain else "?")
    return "".join(out)


def _row(cells: list[str]) -> str:
    """One line of a tabular; ``{}`` before a first cell that opens with ``[``, which the
    ``\\\\`` ending the line before would read as its optional argument."""
    text = " & ".join(cells)
    return ("{}" + text if text.lstrip().startswith("[") else text) + r" \\"


def tabular(headers: list[str], rows: list[list[str]], align: str, caption: str | None = None,
            label: str | None = None) -> str:
    """A booktabs table of already escaped cells; a ``table`` float when there is a caption."""
    body = [r"\begin{tabular}{" + align + "}", r"\toprule", _row(headers), r"\midrule"]
    body += [_row(row) for row in rows]
    body += [r"\bottomrule", r"\end{tabular}"]
    if caption is None:
        return "\n".join(body)
    head = [r"% needs \usepackage{booktabs}", r"\begin{table}[ht]", r"\centering", r"\caption{" + caption + "}"]
    if label:
        head.append(r"\label{" + label + "}")
    return "\n".join([*head, *body, r"\end{table}"])
