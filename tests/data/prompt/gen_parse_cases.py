#!/usr/bin/env python3
"""Reference lists for tests/test_prompt.c: A1111's parse_prompt_attention run on each case.

Usage: gen_parse_cases.py A1111_CHECKOUT > parse_cases.json
A1111_CHECKOUT is a clone of AUTOMATIC1111/stable-diffusion-webui (parse_cases.json was made at commit
28bd8e142d5f77b71ae8d7d7140b5da1b3a49906 of modules/prompt_parser.py). Its module imports lark and torch for the
prompt-editing half, which parse_prompt_attention (pure re) does not use: both are stubbed. A case whose weight
Python cannot read (float() raises) or whose product is not finite is recorded as "error": the library refuses it.
"""
import importlib.util
import json
import math
import sys
import types

stub = types.ModuleType("lark")
stub.Lark = lambda *a, **k: None
stub.Visitor = stub.Transformer = object
stub.exceptions = types.SimpleNamespace(LarkError=Exception)
sys.modules["lark"] = stub
sys.modules.setdefault("torch", types.ModuleType("torch"))

spec = importlib.util.spec_from_file_location("prompt_parser", sys.argv[1] + "/modules/prompt_parser.py")
pp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pp)

CASES = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    "\\(literal\\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "(word)", "((word))", "(((word)))", "[word]", "[[word]]", "([word])", "[(word)]",
    "(word:1.3)", "(word: 1.3 )", "(word:+.5)", "(word:-1)", "(word:1.)", "(word:0)", "(word:007)",
    "((word:1.3))", "[word:1.3]", "(a (b:0.5) c)", "(a [b] c:1.5)",
    "a ) b ] c", "a :1.2) b", "a:b:c", "(a:b)", "(a:1.2:3)", "(a:1.2", "(a : 1.2 )",
    "[a (b] c)", "(a [b) c]", "((a)", "[[a]", "(a]", "[a)", "))((", "]][[",
    "a \\\\ b", "a \\ b", "trailing \\", "\\x", "\\\\(a)", "(\\(a\\))", "\\[a\\] [b]",
    "a BREAK b", "aBREAK b", "a BREAKfast", "BREAK", "BREAK BREAK", "a  BREAK  BREAK b", " BREAK ",
    "(a BREAK b)", "[a BREAK b]", "(a:-1)BREAK", "a,BREAK,b", "_BREAK", "1BREAK", "a\nBREAK\tb",
    "x\u3000BREAK\u3000y", "\u00e9BREAK", "BREAK\u00e9", "a(BREAK)b", "a:BREAK", "a BREAK\\(b",
    "", "(", ")", "[", "]", ":", "\\", "()", "[]", "(:1.2)", "((()))",
    "caf\u00e9 (\u65e5\u672c:1.2), [\u00fcber]",
    "masterpiece, (best quality:1.2), 1girl, [[lowres]], (detailed eyes), BREAK landscape",
    "(a:1.2.3)", "(a:.)", "a:1.2.3)", "(a:" + "9" * 400 + ")",
]

out = []
for case in CASES:
    try:
        res = pp.parse_prompt_attention(case)
        if any(not math.isfinite(w) for _, w in res):
            res = "error"
    except ValueError:
        res = "error"
    out.append({"prompt": case, "expected": res})
sys.stdout.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in out) + "\n]\n")
