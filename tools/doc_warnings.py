#!/usr/bin/env python3
"""`make doc`'s gate: fails on every Doxygen warning but "X is not documented" for an item listed in KNOWN
(docs/doxygen-undocumented.txt: public items of 0.1 that have no comment yet). A listed item that is not reported
any more fails too, so the list only shrinks and says exactly what is missing.

    doc_warnings.py WARN_LOGFILE KNOWN
"""
import re
import sys

MEMBER = re.compile(r"warning: Member (.+?) \((\w+(?: \w+)?)\) of (?:file \S+|(?:struct|union) (\w+)) is not documented")
COMPOUND = re.compile(r"warning: Compound (\w+) is not documented")


def item(line):
    """The undocumented item a warning line names ("struct.field (variable)", "name (function)"), else None."""
    m = MEMBER.search(line)
    if m:
        name, kind, owner = m.groups()
        name = re.sub(r"\(.*", "", name).strip(" )")  # lsd_x(int a) -> lsd_x; lsd_log_fn)(...) -> lsd_log_fn
        return f"{owner}.{name} ({kind})" if owner else f"{name} ({kind})"
    m = COMPOUND.search(line)
    return f"{m.group(1)} (struct)" if m else None


def main(log_path, known_path):
    with open(known_path, encoding="utf-8") as f:
        known = {ln.strip() for ln in f if ln.strip() and not ln.startswith("#")}
    seen, errors = set(), []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            name = item(line)
            if name in known:
                seen.add(name)
            else:
                errors.append(line)
    for line in errors:
        print(f"doc: {line}", file=sys.stderr)
    for name in sorted(known - seen):
        print(f"doc: {name} is not reported any more (documented, renamed or removed): remove it from {known_path}",
              file=sys.stderr)
    if errors or known - seen:
        return 1
    print(f"doc: no new warning; {len(known)} items of {known_path} still lack a comment")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
