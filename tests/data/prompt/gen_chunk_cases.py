#!/usr/bin/env python3
"""Reference chunks for tests/test_prompt.c: A1111's own tokenize_line and EmbeddingDatabase on random prompts.

Usage: gen_chunk_cases.py A1111_CHECKOUT LIBLORA_SD > chunk_cases.json
A1111_CHECKOUT is a clone of AUTOMATIC1111/stable-diffusion-webui (chunk_cases.json was made with
modules/sd_hijack_clip.py at 5ad03e6, modules/textual_inversion/textual_inversion.py at 22ecb78 and
modules/prompt_parser.py at 28bd8e1). The webui modules those files import are stubbed. TextConditionalModel's
tokenize (CLIP's tokenizer without BOS/EOS or a limit) is lsd_model_tokenize of sd-tiny through LIBLORA_SD (e.g.
build/liblora_sd.so.0; that tokenizer is checked against Hugging Face's in tests/test_tokenizer.c), applied to each
whitespace-separated word: CLIP's pattern never matches across whitespace, so the concatenation is the text's
tokenization, and no word comes near the 75-token cut. opts are A1111's defaults: emphasis "Original",
comma_padding_backtrack 20.
"""
import ctypes
import importlib.abc
import importlib.util
import json
import os
import random
import sys
import types

ROOT = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = json.load(open(os.path.join(HERE, "..", "sd-tiny", "tokenizer", "vocab.json"), encoding="utf-8"))


class Stub(types.ModuleType):
    """A module whose every attribute is a harmless placeholder."""
    __path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})


class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    STUBS = ("lark", "safetensors", "PIL", "tqdm", "torch.utils.tensorboard", "modules.textual_inversion.")

    def find_spec(self, name, path, target=None):
        real = name in ("modules", "modules.prompt_parser", "modules.sd_hijack_clip", "modules.textual_inversion",
                        "modules.textual_inversion.textual_inversion")
        if name.startswith(self.STUBS) or (name.startswith("modules.") and not real):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return Stub(spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, StubFinder())


def load(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    parent, _, leaf = name.rpartition(".")
    setattr(sys.modules[parent], leaf, mod)
    spec.loader.exec_module(mod)
    return mod


modules = types.ModuleType("modules")
modules.__path__ = []
sys.modules["modules"] = modules
ti_pkg = types.ModuleType("modules.textual_inversion")
ti_pkg.__path__ = []
sys.modules["modules.textual_inversion"] = ti_pkg
modules.textual_inversion = ti_pkg
import modules.shared  # noqa: E402  (a stub)
modules.shared.opts = types.SimpleNamespace(emphasis="Original", comma_padding_backtrack=20)
import modules.sd_hijack  # noqa: E402  (a stub)
modules.sd_hijack.model_hijack = types.SimpleNamespace(embedding_db=None)
load("modules.prompt_parser", "modules/prompt_parser.py")
clip = load("modules.sd_hijack_clip", "modules/sd_hijack_clip.py")
ti = load("modules.textual_inversion.textual_inversion", "modules/textual_inversion/textual_inversion.py")


lib = ctypes.CDLL(sys.argv[2])
lsd_model = ctypes.c_void_p()
if lib.lsd_model_load(os.path.join(HERE, "..", "sd-tiny").encode(), None, ctypes.byref(lsd_model)):
    sys.exit("cannot load sd-tiny")


def tokenize_one(text):
    ids = []
    for word in text.split():
        buf, n = (ctypes.c_int64 * 77)(), ctypes.c_int()
        if lib.lsd_model_tokenize(lsd_model, word.encode(), buf, 77, ctypes.byref(n)) or n.value > 75:
            sys.exit("cannot tokenize " + word)
        ids += buf[1:1 + n.value]
    return ids


class Model(clip.TextConditionalModel):
    def __init__(self):
        super().__init__()
        self.comma_token = VOCAB[",</w>"]
        self.id_start, self.id_end = VOCAB["<|startoftext|>"], VOCAB["<|endoftext|>"]
        self.id_pad = self.id_end

    def tokenize(self, texts):
        return [tokenize_one(t) for t in texts]


EMBEDDINGS = [("sks", 3), ("lake", 1), ("big-tree", 4), ("house-of", 30)]
model = Model()
db = ti.EmbeddingDatabase()
for name, n in EMBEDDINGS:
    e = ti.Embedding(None, name)
    e.vectors = n
    db.register_embedding(e, types.SimpleNamespace(cond_stage_model=model))
model.hijack = types.SimpleNamespace(embedding_db=db)

WORDS = ["cat", "dog", "red", "blue", "sky", "house", "a", "of", "on", "the", "big", "old", "tree"]


def random_prompt(rng):
    pieces = []
    for _ in range(rng.randint(0, 220)):
        r = rng.random()
        if r < 0.62:
            pieces.append(rng.choice(WORDS) + " ")
        elif r < 0.74:
            pieces.append(", ")
        elif r < 0.80:
            pieces.append(rng.choice(["(", ")", "[", "]"]))
        elif r < 0.83:
            pieces.append(":%s) " % rng.choice(["1.3", "0.5", "2", ".8"]))
        elif r < 0.86:
            pieces.append(" BREAK ")
        else:
            pieces.append(rng.choice(["sks", "lake", "big-tree", "house-of"]) + " ")
    return "".join(pieces)


rng = random.Random(17)
prompts = ["", "cat", "cat BREAK dog", "BREAK", "(cat BREAK dog)", "a sks dog, (lake:1.2) big-tree big tree",
           "cat " * 70 + ", " + "dog " * 10, "cat " * 55 + ", " + "dog " * 30, "cat " * 54 + ", " + "dog " * 30,
           "dog " * 72 + "(sks:1.5) dog", "dog " * 50 + "house-of cat", "dog " * 70 + ", sks dog dog dog dog"]
prompts += [random_prompt(rng) for _ in range(80)]



def body(chunk):
    """The chunk between BOS and its EOS padding (every chunk is BOS + 75 + EOS; the test rebuilds the padding)."""
    t = chunk.tokens[1:]
    while t and t[-1] == model.id_end:
        t.pop()
    return t


out = []
for prompt in prompts:
    chunks, count = model.tokenize_line(prompt)
    assert all(len(c.tokens) == 77 and c.tokens[0] == model.id_start and c.tokens[76] == model.id_end for c in chunks)
    # A fix's offset counts from the chunk's first token (BOS is put in front later). When the comma rule moves an
    # embedding's zeros to the next chunk, A1111 leaves its fix behind, pointing at padding: "fixes_consistent" false.
    consistent = all(c.tokens[1 + f.offset + k] == 0 for c in chunks for f in c.fixes
                     for k in range(f.embedding.vectors))
    out.append({"prompt": prompt, "token_count": count, "fixes_consistent": consistent,
                "chunks": [{"tokens": body(c),
                            "weights": [[i, m] for i, m in enumerate(c.multipliers) if m != 1.0],
                            "fixes": [[1 + f.offset, f.embedding.name] for f in c.fixes]} for c in chunks]})
sys.stdout.write("[\n" + ",\n".join(json.dumps(c, separators=(",", ":")) for c in out) + "\n]\n")
