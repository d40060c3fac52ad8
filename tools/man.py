#!/usr/bin/env python3
"""Writes the man pages of the CLI from its own help: lora-sd(1) from `lora-sd help` and lora-sd-COMMAND(1) from
`lora-sd help COMMAND`, so the pages cannot drift from the program (`make check-man` compares them with man/).

usage: tools/man.py LORA_SD OUT_DIR
"""
import re
import subprocess
import sys


def esc(text):
    """Roff text: backslashes and hyphens escaped, a leading '.' or "'" made literal. Macros (.B, .SS) take their
    text on the next line, so quotes in it stay text."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def page(name, summary, help_text, version, see_also):
    out = [f'.TH {name.upper()} 1 "" "lora-sd {version}" "User Commands"', ".SH NAME",
           f"{esc(name)} \\- {esc(summary)}"]
    lines = help_text.rstrip("\n").split("\n")
    # "usage: ..." and the lines aligned under it
    synopsis = [lines.pop(0)[len("usage: "):]]
    while lines and lines[0].startswith("       "):
        synopsis.append(lines.pop(0).strip())
    out += [".SH SYNOPSIS", ".nf"] + [x for s in synopsis for x in (".B", esc(s))] + [".fi"]
    para, item, described = [], False, False

    def flush():
        if para:
            out.append(esc(" ".join(para)))
            para.clear()

    for line in lines:
        option = re.match(r"^  (-\S.*?|[a-z]+)(?: {2,}(\S.*))?$", line)
        if not line.strip():
            flush()
            item = False
        elif option:
            flush()
            out += [".TP", ".B", esc(option.group(1))] + ([esc(option.group(2))] if option.group(2) else [])
            item = True
        elif item and line.startswith("    "):
            out.append(esc(line.strip()))
        elif line.startswith("Exit status:"):
            flush()
            out += [".SH EXIT STATUS", esc(line.split(":", 1)[1].strip())]
        elif line.endswith(":") and not line.startswith(" "):
            flush()
            # macro arguments would eat the heading's quotes: the heading goes on the line after .SS
            out += [".SH COMMANDS"] if line == "commands:" else [".SS", esc(line[:-1])]
        else:
            if not para:
                out.append(".PP" if described else ".SH DESCRIPTION")
                described = True
            para.append(line.strip())
    flush()
    out += [".SH SEE ALSO", ", ".join(f"\\fB{esc(s)}\\fR(1)" for s in see_also)]
    return "\n".join(out) + "\n"


def main():
    cli, out_dir = sys.argv[1], sys.argv[2]
    run = lambda *a: subprocess.run([cli, *a], check=True, capture_output=True, text=True).stdout
    top = run("help")
    version = run("--version").split("\n")[0].split()[-1]
    commands = re.findall(r"^  ([a-z]+) {2,}(.*)$", top.split("commands:", 1)[1], re.M)
    names = ["lora-sd"] + [f"lora-sd-{c}" for c, _ in commands]
    pages = {"lora-sd": page("lora-sd", "Stable Diffusion 1.x sampling and LoRA training", top, version, names[1:])}
    for c, summary in commands:
        pages[f"lora-sd-{c}"] = page(f"lora-sd-{c}", summary, run("help", c), version,
                                     [n for n in names if n != f"lora-sd-{c}"])
    for name, text in pages.items():
        with open(f"{out_dir}/{name}.1", "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
