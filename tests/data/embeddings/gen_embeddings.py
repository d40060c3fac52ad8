#!/usr/bin/python3
"""Writes the textual-inversion fixtures of tests/test_embedding_file.c (run once with torch; outputs committed).

Every vector element is value(i, j, seed) = ((i * dim + j + seed) % 17) / 8 - 1: multiples of 1/8 in [-1, 1],
exact in fp16 and bf16, so the test recomputes them and compares exactly. Layouts follow what A1111's
modules/textual_inversion/textual_inversion.py and diffusers' load_textual_inversion read."""
import json
import os
import struct

import torch

DIM = 32  # tests/data/sd-tiny's text encoder hidden size
HERE = os.path.dirname(os.path.abspath(__file__))


def vec(n, dim, seed, dtype=torch.float32, flat=False):
    t = torch.tensor([[((i * dim + j + seed) % 17) / 8 - 1 for j in range(dim)] for i in range(n)], dtype=dtype)
    return t[0] if flat else t


def out(name):
    path = os.path.join(HERE, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def a1111(t, name, step=500):
    # what A1111's Embedding.save writes
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": t}, "name": name, "step": step,
            "sd_checkpoint": "7460a6fa", "sd_checkpoint_name": "sd-v1-4"}


ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def save_safetensors(path, tensors, metadata=None):
    """The safetensors layout by hand (/usr/bin/python3 has no safetensors module): 8-byte little-endian header
    length, the JSON header padded with spaces to a multiple of 8, then the tensors' little-endian bytes."""
    header, blobs, offset = {}, [], 0
    for key, t in tensors.items():
        t = t.contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[key] = {"dtype": ST_DTYPE[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# A1111 .pt: one vector fp32, four vectors fp16 (its "name" differs from the file stem on purpose)
torch.save(a1111(vec(1, DIM, 0), "trained-name"), out("a1111_one.pt"))
torch.save(a1111(vec(4, DIM, 3, torch.float16), "multi"), out("a1111_multi_f16.pt"))
# kohya sd-scripts' train_textual_inversion: {"emb_params": [n, dim]} in both containers
torch.save({"emb_params": vec(2, DIM, 5)}, out("kohya_emb.pt"))
save_safetensors(out("kohya_emb_bf16.safetensors"), {"emb_params": vec(3, DIM, 7, torch.bfloat16)},
                 {"ss_output_name": "kohya_emb_bf16"})
# an A1111 .pt converted to safetensors by flattening the dict
save_safetensors(out("a1111_converted.safetensors"), {"string_to_param.*": vec(2, DIM, 9)})
# diffusers textual_inversion.py's learned_embeds: {token: [dim]} (.bin) or [n, dim] (.safetensors)
torch.save({"<cat-toy>": vec(1, DIM, 11, flat=True)}, out("diffusers/learned_embeds.bin"))
save_safetensors(out("diffusers/learned_embeds.safetensors"), {"<cat-toy>": vec(2, DIM, 13, torch.float16)})

# Bad files: each names its culprit
torch.save(a1111(vec(2, 24, 0), "wrong_dim"), out("bad/wrong_dim.pt"))
torch.save({"string_to_token": {"*": 265, "x": 266}, "string_to_param": {"*": vec(1, DIM, 0), "x": vec(1, DIM, 1)},
            "name": "two"}, out("bad/two_terms.pt"))
torch.save({"a": vec(1, DIM, 0), "b": vec(1, DIM, 1)}, out("bad/two_tensors.bin"))
torch.save({"step": 3, "name": "x"}, out("bad/no_tensor.pt"))
torch.save(a1111(vec(1, DIM, 0), "legacy"), out("bad/legacy.pt"), _use_new_zipfile_serialization=False)
save_safetensors(out("bad/sdxl.safetensors"), {"clip_g": vec(2, 40, 0), "clip_l": vec(2, DIM, 0)})
save_safetensors(out("bad/int.safetensors"), {"emb_params": torch.arange(DIM, dtype=torch.int64).reshape(1, DIM)})
save_safetensors(out("bad/rank3.safetensors"), {"emb_params": vec(2, DIM, 0).reshape(1, 2, DIM)})
with open(out("a1111_one.pt"), "rb") as f:
    whole = f.read()
with open(out("bad/truncated.pt"), "wb") as f:
    f.write(whole[:len(whole) // 2])
