#!/usr/bin/env python3
"""Doxygen's INPUT_FILTER for include/lora_sd.h (docs/Doxyfile): marks the header's plain C comments as
documentation, so the header stays ordinary C for its readers while `make doc` builds the API reference from it.

- the file's first comment documents the file (\\file);
- a comment on lines of its own, directly above a declaration, documents that declaration (/** ... */);
- a comment after code on the same line documents that member, value or function (/**< ... */);
- section banners, the `---- 0.2 ----` markers and comments followed by a blank line stay plain comments;
- the fields every struct has by convention (docs/API.md), `struct_size` and a callback's `*_user`, get the
  convention as their documentation when they have no comment of their own.

Inside the comments, < and > are escaped: the header writes placeholders such as checkpoint-<step>, which Doxygen
would take for HTML tags. Lines are neither added nor removed, so Doxygen's warnings give the header's line numbers.
"""
import re
import sys

COMMENT = re.compile(r"/\*(.*?)\*/", re.S)
MARKER = re.compile(r"^\s*-{2,}")  # a banner or a `---- 0.2 ----` marker
OPENS_DECLARATION = re.compile(r"^\s*(LSD_API|typedef|struct|enum|#define|[A-Za-z_][\w ]*[\w*]\s*[\w(])")
CONVENTIONS = [
    (re.compile(r"^(\s*size_t struct_size;)[ \t]*$", re.M),
     r"\1 /**< sizeof this struct as its writer compiled it: the params' init function, the caller of an info "
     r'struct, the library for a callback (docs/ABI.md "Struct sizes") */'),
    (re.compile(r"^(\s*void \*(\w+)_user;)[ \t]*$", re.M), r"\1 /**< passed to \2 as its user argument */"),
]


def filtered(text):
    for pattern, doc in CONVENTIONS:
        text = pattern.sub(doc, text)
    out, pos, first = [], 0, True
    for m in COMMENT.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        body = m.group(1)
        line_start = text.rfind("\n", 0, m.start()) + 1
        after = text[m.end():]
        rest_of_line, _, following = after.partition("\n")
        next_line = following.split("\n", 1)[0]
        if first:
            kind = "file"
        elif MARKER.match(body) or body.startswith("*"):  # a marker, or documentation already (CONVENTIONS)
            kind = None
        elif text[line_start:m.start()].strip():
            kind = "after"
        elif not rest_of_line.strip() and OPENS_DECLARATION.match(next_line):
            kind = "before"
        else:
            kind = None
        first = False
        if kind is None:
            out.append(m.group(0))
            continue
        body = body.replace("<", "\\<").replace(">", "\\>")
        out.append({"file": "/** \\file" + body, "before": "/**" + body, "after": "/**<" + body}[kind] + "*/")
    out.append(text[pos:])
    return "".join(out)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        sys.stdout.write(filtered(f.read()))
