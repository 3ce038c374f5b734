"""``.. markdown-include:: PATH``: render a Markdown file of this repository (or a marked part of
it) in a reStructuredText page, so that a table written once, in ``benchmarks/results/*.md`` or in
the README, is shown in the docs without a copy.

Only the Markdown that those files use is understood: ``#`` headings (rendered as rubrics),
paragraphs, ``-`` and ``1.`` lists, pipe tables, fenced code blocks, inline code, bold and links
(an image is shown as its alt text). HTML comments are dropped. The options ``:start-after:``
and ``:end-before:`` take a marker (e.g. ``<!-- estimators:start -->``) and keep only the text
between the two.
"""

import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles

_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"(!?)\[([^\]]+)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```(\w*)\s*$")
_BULLET = re.compile(r"^(\s*)([-*]|\d+\.)\s+(.*)$")
_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _separate(text, start, end):
    """Escaped spaces around inline markup that touches a word (rst needs a boundary there)."""
    before = "\\ " if start > 0 and text[start - 1].isalnum() else ""
    after = "\\ " if end < len(text) and text[end].isalnum() else ""
    return before, after


def _inline(text):
    """Markdown inline markup to reStructuredText: code, links (a link to a file of this
    repository becomes its path as code: the docs have no copy of that file), bold stays."""
    out, pos = [], 0
    pattern = re.compile(f"{_CODE.pattern}|{_LINK.pattern}")
    for match in pattern.finditer(text):
        out.append(text[pos:match.start()])
        before, after = _separate(text, match.start(), match.end())
        if match.group(1) is not None:
            out.append(f"{before}``{match.group(1)}``{after}")
        else:
            bang, label, target = match.group(2), match.group(3), match.group(4)
            label = _CODE.sub(lambda m: m.group(1), label)
            if bang:
                out.append(label)
            elif re.match(r"https?://", target):
                out.append(f"{before}`{label} <{target}>`__{after}")
            else:
                out.append(f"{before}{label} (``{target}``){after}")
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(rows):
    header, body = _cells(rows[0]), [_cells(row) for row in rows[2:]]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header] + body:
        for i, cell in enumerate(row):
            lines.append(("   * - " if i == 0 else "     - ") + _inline(cell))
    return lines + [""]


def markdown_to_rst(text):
    """The subset of Markdown described in the module docstring, as reStructuredText lines."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            out += [f".. code-block:: {fence.group(1) or 'text'}", ""]
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                out.append("   " + lines[i] if lines[i] else "")
                i += 1
            out.append("")
            i += 1
        elif line.startswith("#"):
            out += [f".. rubric:: {_inline(line.lstrip('#').strip())}", ""]
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1]):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            out += _table(rows)
        elif _BULLET.match(line):
            while i < len(lines) and lines[i].strip():
                item = _BULLET.match(lines[i])
                if item:
                    marker = "-" if item.group(2) in "-*" else "#."
                    indent = " " * (len(marker) + 1)
                    out.append(f"{marker} {_inline(item.group(3))}")
                else:
                    out.append(indent + _inline(lines[i].strip()))
                i += 1
            out.append("")
        elif line.strip():
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("|", "```")):
                out.append(_inline(lines[i].strip()))
                i += 1
            out.append("")
        else:
            i += 1
    return out


class MarkdownInclude(Directive):
    required_arguments = 1
    option_spec = {"start-after": directives.unchanged, "end-before": directives.unchanged}

    def run(self):
        env = self.state.document.settings.env
        relative, absolute = env.relfn2path(self.arguments[0])
        path = Path(absolute)
        env.note_dependency(relative)
        text = path.read_text(encoding="utf-8")
        for option, keep in (("start-after", 1), ("end-before", 0)):
            marker = self.options.get(option)
            if marker is not None:
                if marker not in text:
                    raise self.error(f"{path}: marker {marker!r} not found")
                text = text.split(marker, 1)[keep]
        content = StringList(markdown_to_rst(text), source=str(path))
        container = nodes.container()
        nested_parse_with_titles(self.state, content, container)
        return container.children


def setup(app):
    app.add_directive("markdown-include", MarkdownInclude)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
