#!/usr/bin/python3
"""Generates the LyCORIS fixtures of tests/test_lycoris.c for the tiny model (tests/data/sd-tiny): small kohya-named
LoHa, LoKr, full-diff and DoRA files, and expected.safetensors holding, for every module they touch, the weight
merged by the reference formulas below (written from LyCORIS's lycoris/functional/{loha,lokr}.py and
modules/*.py apply_weight_decompose, A1111's extensions-builtin/Lora network_*.py):

  LoHa   dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank     rank = hada_w1_b.shape[0]
         Tucker: each factor einsum("i j k l, i p, j r -> p r k l", hada_t, w_a, w_b)
  LoKr   dW = kron(w1, w2) * scale, w1 = lokr_w1 or w1_a @ w1_b, w2 = lokr_w2 or w2_a @ w2_b (Tucker as LoHa's);
         scale = alpha / rank, rank = lokr_w1_b.shape[0] else lokr_w2_b.shape[0]; neither decomposed: scale 1
  full   dW = diff, db = diff_b
  DoRA   V = W + dW, W' = V * dora_scale / (||V|| + eps) with the norm per output row when dora_scale is [out, 1, ...]
         and per input column when it is [1, in, ...]; at user weight m: W + m (W' - W)

Run once from the repository root with /usr/bin/python3 (torch); the outputs are committed."""
import json
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "sd-tiny")
torch.manual_seed(1717)


def st_read(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        dt = {"F32": torch.float32, "F16": torch.float16}.get(v["dtype"])
        if dt is None:
            continue
        s, e = v["data_offsets"]
        out[k] = torch.frombuffer(bytearray(b[8 + n + s:8 + n + e]), dtype=dt).reshape(v["shape"]).float()
    return out


def st_write(path, tensors):
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        t = tensors[k].detach().to(torch.float32).contiguous()
        data = t.numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


UNET = st_read(os.path.join(TINY, "unet", "diffusion_pytorch_model.safetensors"))
TE = st_read(os.path.join(TINY, "text_encoder", "model.safetensors"))
EPS = torch.finfo(torch.float32).eps


def base(net, path):
    return (UNET if net == "unet" else TE)[path + ".weight"]


def kname(net, path):
    return ("lora_unet_" if net == "unet" else "lora_te_") + path.replace(".", "_")


def rnd(*shape, std=0.3):
    return torch.randn(*shape) * std


def tucker(t, wa, wb):
    return torch.einsum("i j k l, i p, j r -> p r k l", t, wa, wb)


def loha_delta(w, d):
    rank = d["hada_w1_b"].shape[0]
    scale = float(d["alpha"]) / rank if "alpha" in d else 1.0
    if "hada_t1" in d:
        f1 = tucker(d["hada_t1"], d["hada_w1_a"], d["hada_w1_b"])
        f2 = tucker(d["hada_t2"], d["hada_w2_a"], d["hada_w2_b"])
    else:
        f1 = d["hada_w1_a"] @ d["hada_w1_b"].reshape(rank, -1)
        f2 = d["hada_w2_a"] @ d["hada_w2_b"].reshape(d["hada_w2_b"].shape[0], -1)
    return (f1 * f2 * scale).reshape(w.shape)


def lokr_delta(w, d):
    w1 = d["lokr_w1"] if "lokr_w1" in d else d["lokr_w1_a"] @ d["lokr_w1_b"]
    if "lokr_w2" in d:
        w2 = d["lokr_w2"]
    elif "lokr_t2" in d:
        w2 = tucker(d["lokr_t2"], d["lokr_w2_a"], d["lokr_w2_b"])
    else:
        r = d["lokr_w2_b"].shape[0]
        w2 = d["lokr_w2_a"] @ d["lokr_w2_b"].reshape(r, -1)
        if w.dim() == 4:
            w2 = w2.reshape(w2.shape[0], -1, *w.shape[2:])
    if "lokr_w1_b" in d:
        rank = d["lokr_w1_b"].shape[0]
    elif "lokr_w2_b" in d:
        rank = d["lokr_w2_b"].shape[0]
    else:
        rank = None
    scale = float(d["alpha"]) / rank if rank and "alpha" in d else 1.0
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    return (torch.kron(w1, w2.contiguous()) * scale).reshape(w.shape)


def lora_delta(w, d):
    down, up = d["lora_down.weight"], d["lora_up.weight"]
    r = down.shape[0]
    scale = float(d["alpha"]) / r
    return (up.reshape(up.shape[0], -1) @ down.reshape(r, -1)).reshape(w.shape) * scale


def dora(w, dw, scale_t, m):
    v = w + dw
    if scale_t.shape[0] == w.shape[0] and scale_t.numel() == w.shape[0]:
        norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(scale_t.shape)
    else:
        norm = v.transpose(0, 1).reshape(v.shape[1], -1).norm(dim=1).reshape(scale_t.shape)
    wp = v * (scale_t / (norm + EPS))
    return w + m * (wp - w)


def merged(kind, w, d, m=1.0):
    dw = {"loha": loha_delta, "lokr": lokr_delta, "lora": lora_delta, "full": lambda w, d: d["diff"]}[kind](w, d)
    if "dora_scale" in d:
        return dora(w, dw, d["dora_scale"], m)
    return w + m * dw


Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
FF = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"
OUT = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
V = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v"
PIN = "down_blocks.0.attentions.0.proj_in"
C1 = "down_blocks.0.resnets.0.conv1"
C2 = "down_blocks.0.resnets.0.conv2"
DS = "down_blocks.0.downsamplers.0.conv"
R1C1 = "down_blocks.0.resnets.1.conv1"
TQ = "text_model.encoder.layers.0.self_attn.q_proj"
TK = "text_model.encoder.layers.0.self_attn.k_proj"
TFC1 = "text_model.encoder.layers.0.mlp.fc1"
TOUT = "text_model.encoder.layers.0.self_attn.out_proj"


def loha_linear(net, path, r, alpha=None):
    o, i = base(net, path).shape
    d = {"hada_w1_a": rnd(o, r), "hada_w1_b": rnd(r, i), "hada_w2_a": rnd(o, r), "hada_w2_b": rnd(r, i)}
    if alpha is not None:
        d["alpha"] = torch.tensor(alpha)
    return d


def loha_tucker(net, path, r, alpha):
    o, i, kh, kw = base(net, path).shape
    return {"hada_t1": rnd(r, r, kh, kw), "hada_w1_a": rnd(r, o), "hada_w1_b": rnd(r, i),
            "hada_t2": rnd(r, r, kh, kw), "hada_w2_a": rnd(r, o), "hada_w2_b": rnd(r, i), "alpha": torch.tensor(alpha)}


def with_dora(net, path, d, axis, kind):
    w = base(net, path)
    dw = {"loha": loha_delta, "lokr": lokr_delta, "lora": lora_delta}[kind](w, d)
    v = w + dw
    if axis == 0:
        n = v.reshape(v.shape[0], -1).norm(dim=1).reshape(v.shape[0], *[1] * (w.dim() - 1))
    else:
        n = v.transpose(0, 1).reshape(v.shape[1], -1).norm(dim=1).reshape(1, v.shape[1], *[1] * (w.dim() - 2))
    d = dict(d)
    d["dora_scale"] = n * (1 + 0.2 * torch.randn(n.shape))  # magnitudes near the weight's, as a trained file
    return d


FILES = {
    "loha": [
        ("unet", Q, "loha", loha_linear("unet", Q, 4, 2.0)),
        ("unet", FF, "loha", loha_linear("unet", FF, 2)),  # no alpha: scale 1
        ("unet", C1, "loha", loha_tucker("unet", C1, 3, 1.5)),
        ("unet", DS, "loha", {"hada_w1_a": rnd(16, 2), "hada_w1_b": rnd(2, 144), "hada_w2_a": rnd(16, 2),
                              "hada_w2_b": rnd(2, 16, 3, 3), "alpha": torch.tensor(4.0)}),
        ("te", TQ, "loha", loha_linear("te", TQ, 4, 8.0)),
    ],
    "lokr": [
        ("unet", K2, "lokr", {"lokr_w1": rnd(4, 4), "lokr_w2": rnd(4, 8), "alpha": torch.tensor(3.0)}),  # scale 1
        ("unet", FF, "lokr", {"lokr_w1_a": rnd(8, 2), "lokr_w1_b": rnd(2, 4), "lokr_w2_a": rnd(16, 2),
                              "lokr_w2_b": rnd(2, 4), "alpha": torch.tensor(1.0)}),
        ("unet", C2, "lokr", {"lokr_w1": rnd(4, 4), "lokr_t2": rnd(2, 2, 3, 3), "lokr_w2_a": rnd(2, 4),
                              "lokr_w2_b": rnd(2, 4), "alpha": torch.tensor(1.0)}),
        ("unet", R1C1, "lokr", {"lokr_w1": rnd(2, 2), "lokr_w2_a": rnd(8, 3), "lokr_w2_b": rnd(3, 72),
                                "alpha": torch.tensor(6.0)}),
        ("te", TFC1, "lokr", {"lokr_w1": rnd(1, 4), "lokr_w2": rnd(37, 8)}),
        ("te", TK, "lokr", {"lokr_w1_a": rnd(4, 2), "lokr_w1_b": rnd(2, 4), "lokr_w2": rnd(8, 8),
                            "alpha": torch.tensor(4.0)}),
    ],
    "full": [
        ("unet", OUT, "full", {"diff": rnd(16, 16, std=0.1), "diff_b": rnd(16, std=0.1)}),
        ("unet", PIN, "full", {"diff": rnd(16, 16, 1, 1, std=0.1), "diff_b": rnd(16, std=0.1)}),
        ("unet", V, "full", {"diff": rnd(16, 16, std=0.1)}),
        ("te", TOUT, "full", {"diff": rnd(32, 32, std=0.1), "diff_b": rnd(32, std=0.1)}),
    ],
}
FILES["dora"] = [
    ("unet", Q, "lora", with_dora("unet", Q, {"lora_down.weight": rnd(4, 16), "lora_up.weight": rnd(16, 4),
                                             "alpha": torch.tensor(4.0)}, 0, "lora")),
    ("unet", C2, "lora", with_dora("unet", C2, {"lora_down.weight": rnd(4, 16, 3, 3),
                                               "lora_up.weight": rnd(16, 4, 1, 1), "alpha": torch.tensor(2.0)}, 0,
                                   "lora")),
    ("unet", C1, "loha", with_dora("unet", C1, loha_tucker("unet", C1, 3, 1.5), 1, "loha")),
    ("unet", FF, "lokr", with_dora("unet", FF, FILES["lokr"][1][3], 0, "lokr")),
    ("te", TQ, "lora", with_dora("te", TQ, {"lora_down.weight": rnd(4, 32), "lora_up.weight": rnd(32, 4),
                                           "alpha": torch.tensor(4.0)}, 1, "lora")),
]

expected = {}
for name, mods in FILES.items():
    tensors = {}
    for net, path, kind, d in mods:
        for k, v in d.items():
            tensors[kname(net, path) + "." + k] = v
        w = base(net, path)
        expected[f"{name}/{net}.{path}.weight"] = merged(kind, w, d)
        if name == "dora":
            expected[f"{name}@0.5/{net}.{path}.weight"] = merged(kind, w, d, 0.5)
        if "diff_b" in d:
            expected[f"{name}/{net}.{path}.bias"] = (UNET if net == "unet" else TE)[path + ".bias"] + d["diff_b"]
    st_write(os.path.join(HERE, name + ".safetensors"), tensors)
    if name == "loha":
        # one key more each: a module the model lacks, and a tensor kind this library does not apply
        extra = dict(tensors)
        extra["lora_unet_mid_block_attentions_7_proj_in.hada_w1_a"] = rnd(16, 2)
        st_write(os.path.join(HERE, "loha_unknown_module.safetensors"), extra)
        extra = dict(tensors)
        extra[kname("unet", PIN) + ".lokr_t1"] = rnd(2, 2)
        st_write(os.path.join(HERE, "loha_unknown_kind.safetensors"), extra)
st_write(os.path.join(HERE, "expected.safetensors"), expected)
