"""PyTorch reference of the cdcdd model (docs/model.md, implemented exactly).

Used by the C-vs-PyTorch parity test (tests/integration/test_parity.py) and as the peer
of the performance benchmark (tests/reference/bench_torch.py), so it is written the way a
PyTorch user would write it: an nn.Module, autograd, torch.optim.AdamW, matmul + masked
softmax attention (torch 1.13 has no F.scaled_dot_product_attention).

Run with Debian's torch: /usr/bin/python3 (python3-torch 1.13).

    cfg = preset("tiny")                       # or a dict with the docs/model.md keys
    model = CDCDModel(cfg)                     # parameters named as docs/model.md
    logits = model(ids, pad_mask, cond_mask, sigma, noise)            # (B,T,V)
    loss, per_seq = cdcd_loss(logits, ids, loss_mask)
    opt = make_adamw(model, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)

Also: read_cdts / write_cdts for the ".cdts" tensor exchange file (docs/model.md, end).
"""

import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- config

PRESETS = {
    "tiny": dict(d_emb=64, d_model=256, n_heads=4, n_layers=4, cond_dim=64),
    "small": dict(d_emb=64, d_model=512, n_heads=8, n_layers=8, cond_dim=128),
    "base": dict(d_emb=256, d_model=1024, n_heads=16, n_layers=8, cond_dim=128),
    "seed100m": dict(d_emb=256, d_model=768, n_heads=12, n_layers=9, cond_dim=128),
}

DEFAULTS = dict(vocab_size=30522, d_emb=64, d_model=256, n_heads=4, n_layers=4, cond_dim=64,
                max_seq_len=128, head="logits", cond_channels=True, self_cond=False,
                output_prior=False, emb_init_std=0.001, init_std=0.02)


def normalize_config(cfg):
    """Returns a complete config dict from a partial one (docs/model.md keys). Accepts the
    C side's spellings too: head as "logits"/"embedding" or 0/1, head_embedding 0/1,
    booleans as 0/1."""
    out = dict(DEFAULTS)
    cfg = dict(cfg or {})
    if "head_embedding" in cfg and "head" not in cfg:
        cfg["head"] = "embedding" if int(cfg["head_embedding"]) else "logits"
    cfg.pop("head_embedding", None)
    for k, v in cfg.items():
        if k in out:
            out[k] = v
    h = out["head"]
    if isinstance(h, (int, float)) and not isinstance(h, bool):
        out["head"] = "embedding" if int(h) == 1 else "logits"
    if out["head"] not in ("logits", "embedding"):
        raise ValueError(f"head must be 'logits' or 'embedding', not {out['head']!r}")
    for k in ("vocab_size", "d_emb", "d_model", "n_heads", "n_layers", "cond_dim", "max_seq_len"):
        out[k] = int(out[k])
    for k in ("cond_channels", "self_cond", "output_prior"):
        out[k] = bool(out[k])
    if out["output_prior"] and out["head"] != "logits":
        raise ValueError("output_prior needs the logits head")
    for k in ("emb_init_std", "init_std"):
        out[k] = float(out[k])
    if out["d_model"] % out["n_heads"] or (out["d_model"] // out["n_heads"]) % 2:
        raise ValueError("d_model must be divisible by n_heads with an even head dim")
    if out["cond_dim"] % 2 or out["cond_dim"] < 4:
        raise ValueError("cond_dim must be even and >= 4")
    return out


def preset(name, **overrides):
    cfg = dict(DEFAULTS)
    cfg.update(PRESETS[name])
    cfg.update(overrides)
    return normalize_config(cfg)


def in_dim(cfg):
    E = cfg["d_emb"]
    return E + (E + 1 if cfg["cond_channels"] else 0) + (E if cfg["self_cond"] else 0)


def param_shapes(cfg):
    """[(name, shape)] in the docs/model.md "Parameter order"."""
    V, E, D, C = cfg["vocab_size"], cfg["d_emb"], cfg["d_model"], cfg["cond_dim"]
    out = [("emb", (V, E)), ("in_w", (D, in_dim(cfg))), ("in_b", (D,)),
           ("time_w1", (C, C)), ("time_b1", (C,)), ("time_w2", (C, C)), ("time_b2", (C,))]
    for l in range(cfg["n_layers"]):
        p = f"blocks.{l}."
        out += [(p + "ada_w", (6 * D, C)), (p + "ada_b", (6 * D,)), (p + "qkv_w", (3 * D, D)),
                (p + "attn_scale", (1,)), (p + "proj_w", (D, D)), (p + "proj_b", (D,)),
                (p + "fc1_w", (4 * D, D)), (p + "fc1_b", (4 * D,)), (p + "fc2_w", (D, 4 * D)),
                (p + "fc2_b", (D,))]
    HO = V if cfg["head"] == "logits" else E
    out += [("final_ada_w", (2 * D, C)), ("final_ada_b", (2 * D,)), ("head_w", (HO, D)),
            ("head_b", (HO,))]
    return out


def is_decayed(name):
    """AdamW weight decay: every *_w matrix; not biases, attn_scale or emb."""
    return name.endswith("_w")


# ------------------------------------------------------------------------------ model

def layer_norm(x, eps=1e-6):
    """LayerNorm over the last axis, no affine, biased variance."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def modulate(x, shift, scale):
    """adaLN: x * (1 + scale) + shift, with per-sequence (B, D) shift and scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def rope_tables(T, hd, dtype, device):
    """cos, sin of shape (T, hd): theta_i = 10000^(-2i/hd), i < hd/2, values repeated twice."""
    half = hd // 2
    theta = torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=device),
                      -2.0 * torch.arange(half, dtype=torch.float64, device=device) / hd)
    ang = torch.arange(T, dtype=torch.float64, device=device)[:, None] * theta[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


class Block(nn.Module):
    """Pre-LN DiT block with adaLN-Zero; attention with QK-norm, RoPE and a learnable gain."""

    def __init__(self, D, H, C, max_seq_len):
        super().__init__()
        self.D, self.H, self.hd = D, H, D // H
        self.ada_w = nn.Parameter(torch.zeros(6 * D, C))
        self.ada_b = nn.Parameter(torch.zeros(6 * D))
        self.qkv_w = nn.Parameter(torch.empty(3 * D, D))
        self.attn_scale = nn.Parameter(torch.full((1,), math.log2(max_seq_len ** 2 - max_seq_len)))
        self.proj_w = nn.Parameter(torch.empty(D, D))
        self.proj_b = nn.Parameter(torch.zeros(D))
        self.fc1_w = nn.Parameter(torch.empty(4 * D, D))
        self.fc1_b = nn.Parameter(torch.zeros(4 * D))
        self.fc2_w = nn.Parameter(torch.empty(D, 4 * D))
        self.fc2_b = nn.Parameter(torch.zeros(D))

    def forward(self, h, c, cos, sin, key_mask):
        B, T, D = h.shape
        H, hd = self.H, self.hd
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = F.linear(c, self.ada_w, self.ada_b).chunk(6, dim=-1)

        a = modulate(layer_norm(h), shift_a, scale_a)
        q, k, v = F.linear(a, self.qkv_w).split(D, dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)  # (B,H,T,hd)
        k = k.view(B, T, H, hd).transpose(1, 2)
        v = v.view(B, T, H, hd).transpose(1, 2)
        q = apply_rope(F.normalize(q, dim=-1, eps=1e-12), cos, sin)
        k = apply_rope(F.normalize(k, dim=-1, eps=1e-12), cos, sin)
        scores = self.attn_scale * torch.matmul(q, k.transpose(-2, -1))  # (B,H,T,T)
        if key_mask is not None:
            scores = scores.masked_fill(key_mask, float("-inf"))
        o = torch.matmul(scores.softmax(dim=-1), v)
        o = o.transpose(1, 2).reshape(B, T, D)
        h = h + gate_a.unsqueeze(1) * F.linear(o, self.proj_w, self.proj_b)

        m = modulate(layer_norm(h), shift_m, scale_m)
        mlp = F.linear(F.gelu(F.linear(m, self.fc1_w, self.fc1_b)), self.fc2_w, self.fc2_b)
        return h + gate_m.unsqueeze(1) * mlp


class CDCDModel(nn.Module):
    """docs/model.md. Parameter names (named_parameters) are exactly the documented ones,
    e.g. "emb", "blocks.0.qkv_w", "head_b"; ordered_parameters() yields them in the
    documented order."""

    def __init__(self, cfg, seed=None):
        super().__init__()
        cfg = normalize_config(cfg)
        self.cfg = cfg
        V, E, D, H, C = cfg["vocab_size"], cfg["d_emb"], cfg["d_model"], cfg["n_heads"], cfg["cond_dim"]
        self.V, self.E, self.D, self.H, self.C = V, E, D, H, C
        self.emb = nn.Parameter(torch.empty(V, E))
        self.in_w = nn.Parameter(torch.empty(D, in_dim(cfg)))
        self.in_b = nn.Parameter(torch.zeros(D))
        self.time_w1 = nn.Parameter(torch.empty(C, C))
        self.time_b1 = nn.Parameter(torch.zeros(C))
        self.time_w2 = nn.Parameter(torch.empty(C, C))
        self.time_b2 = nn.Parameter(torch.zeros(C))
        self.blocks = nn.ModuleList(Block(D, H, C, cfg["max_seq_len"]) for _ in range(cfg["n_layers"]))
        HO = V if cfg["head"] == "logits" else E
        self.final_ada_w = nn.Parameter(torch.zeros(2 * D, C))
        self.final_ada_b = nn.Parameter(torch.zeros(2 * D))
        self.head_w = nn.Parameter(torch.empty(HO, D))
        self.head_b = nn.Parameter(torch.zeros(HO))
        self.reset_parameters(seed)

    # -- parameters

    def reset_parameters(self, seed=None):
        """docs/model.md "Initialisation" (torch's RNG, so not the C side's numbers)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name == "emb":
                    p.copy_(torch.randn(p.shape, generator=g) * self.cfg["emb_init_std"])
                elif name.endswith("attn_scale"):
                    p.fill_(math.log2(self.cfg["max_seq_len"] ** 2 - self.cfg["max_seq_len"]))
                elif "ada_" in name or name.endswith("_b") or (name == "head_w" and self.cfg["output_prior"]):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * self.cfg["init_std"])

    def ordered_parameters(self):
        """[(name, Parameter)] in the docs/model.md "Parameter order"."""
        params = dict(self.named_parameters())
        return [(n, params[n]) for n, _ in param_shapes(self.cfg)]

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    # -- forward

    def embed(self, ids):
        """e = sqrt(E) * Emb[ids] / max(|Emb[ids]|, 1e-12); gradients flow through."""
        return F.normalize(F.embedding(ids, self.emb), dim=-1, eps=1e-12) * math.sqrt(self.E)

    def unit_embeddings(self):
        """e~ (V,E): the table normalised to unit rows."""
        return F.normalize(self.emb, dim=-1, eps=1e-12)

    def time_embedding(self, sigma):
        """c = SiLU(time_w2 GELU(time_w1 f + b1) + b2), f = interleaved sin/cos Fourier
        features of c_noise = ln(sigma)/4 at K = C/2 fixed frequencies 1 .. 100."""
        K = self.C // 2
        k = torch.arange(K, dtype=sigma.dtype, device=sigma.device)
        w = torch.exp(k / (K - 1) * math.log(100.0))
        arg = (torch.log(sigma) / 4).unsqueeze(-1) * w  # (B,K)
        f = torch.stack([torch.sin(arg), torch.cos(arg)], dim=-1).reshape(sigma.shape[0], self.C)
        temb = F.linear(F.gelu(F.linear(f, self.time_w1, self.time_b1)), self.time_w2, self.time_b2)
        return F.silu(temb)

    def denoise(self, x, sigma, pad_mask=None, cond_mask=None, clean=None, self_cond=None):
        """The network on a given state x (B,T,E) at noise levels sigma (B,): returns the
        logits (B,T,V). cond_mask (B,T) marks positions fed clean (clean (B,T,E) there, the
        noisy channel zero); pad_mask (B,T) 1 = real key; self_cond (B,T,E) or None."""
        B, T, E = x.shape
        cfg = self.cfg
        s = sigma.to(x.dtype).view(B, 1, 1)
        c_in = torch.rsqrt(1 + s * s)
        chans = []
        if cond_mask is not None:
            cm = cond_mask.to(x.dtype).unsqueeze(-1)  # (B,T,1)
            chans.append(c_in * x * (1 - cm))
        else:
            cm = None
            chans.append(c_in * x)
        if cfg["cond_channels"]:
            if cm is None:
                chans += [x.new_zeros(B, T, E), x.new_zeros(B, T, 1)]
            else:
                chans += [clean * cm, cm]
        if cfg["self_cond"]:
            chans.append(self_cond.detach().to(x.dtype) if self_cond is not None else x.new_zeros(B, T, E))
        h = F.linear(torch.cat(chans, dim=-1), self.in_w, self.in_b)

        c = self.time_embedding(sigma.to(x.dtype))
        cos, sin = rope_tables(T, self.D // self.H, x.dtype, x.device)
        key_mask = None
        if pad_mask is not None:
            key_mask = (pad_mask == 0).view(B, 1, 1, T)
        for blk in self.blocks:
            h = blk(h, c, cos, sin, key_mask)

        shift, scale = F.linear(c, self.final_ada_w, self.final_ada_b).chunk(2, dim=-1)
        z = modulate(layer_norm(h), shift, scale)
        out = F.linear(z, self.head_w, self.head_b)
        if cfg["head"] == "logits":
            if cfg["output_prior"]:  # + x . e_j / sigma^2 (docs/model.md "Head")
                e = math.sqrt(E) * self.unit_embeddings()
                out = out + torch.matmul(x, e.t()) / (s * s)
            return out
        c_skip = 1 / (1 + s * s)
        c_out = s * c_in
        Dx = c_skip * x + c_out * out
        return torch.matmul(Dx, self.unit_embeddings().t())

    def forward(self, ids, pad_mask, cond_mask, sigma, noise, self_cond=None):
        """Training forward: x = e_ids + sigma * noise; returns the logits (B,T,V)."""
        e = self.embed(ids)
        x = e + sigma.to(e.dtype).view(-1, 1, 1) * noise.to(e.dtype)
        return self.denoise(x, sigma, pad_mask, cond_mask, e, self_cond)


def cdcd_loss(logits, ids, loss_mask):
    """(batch loss, per_seq_loss (B,)): CE per position over loss_mask, mean per sequence
    (0 when it has none), then mean over the sequences that have a loss position."""
    B, T, V = logits.shape
    ce = F.cross_entropy(logits.reshape(B * T, V), ids.reshape(B * T).long(), reduction="none").view(B, T)
    lm = loss_mask.to(ce.dtype)
    cnt = lm.sum(dim=1)
    per_seq = (ce * lm).sum(dim=1) / cnt.clamp(min=1)
    has = cnt > 0
    loss = per_seq[has].mean() if bool(has.any()) else per_seq.sum() * 0
    return loss, per_seq


def make_adamw(model, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01):
    """torch.optim.AdamW with the docs/model.md groups: decay on every *_w matrix; none on
    biases, attn_scale and emb. Global grad-norm clipping is the caller's:
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip) before opt.step()."""
    decay, no_decay = [], []
    for name, p in model.ordered_parameters():
        (decay if is_decayed(name) else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=eps)


def clip_and_step(model, opt, clip):
    """Global grad-norm clipping (when clip > 0) then opt.step(). Returns the pre-clip norm."""
    params = [p for _, p in model.ordered_parameters()]
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = torch.norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
    opt.step()
    return float(norm)


# ----------------------------------------------------------------------- .cdts files

CDTS_MAGIC = b"CDCDTNS1"
_DTYPES = {"f32": np.dtype("<f4"), "i32": np.dtype("<i4"), "u8": np.dtype("u1")}


def read_cdts(path):
    """Returns (config dict, {name: numpy array}, header dict) from a .cdts file:
    "CDCDTNS1" . uint64 LE N . N bytes of JSON . data (offsets from the data start)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 16 or blob[:8] != CDTS_MAGIC:
        raise ValueError(f"{path}: not a .cdts file (bad magic)")
    (n,) = struct.unpack("<Q", blob[8:16])
    if 16 + n > len(blob):
        raise ValueError(f"{path}: header length {n} past the end of the file")
    header = json.loads(blob[16:16 + n].decode("utf-8"))
    if header.get("version") != 1:
        raise ValueError(f"{path}: unsupported version {header.get('version')!r}")
    data = memoryview(blob)[16 + n:]
    tensors = {}
    for t in header["tensors"]:
        dt = _DTYPES.get(t["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {t['name']}: unknown dtype {t['dtype']!r}")
        shape = tuple(int(s) for s in t["shape"])
        count = int(np.prod(shape)) if shape else 1
        off = int(t["offset"])
        end = off + count * dt.itemsize
        if off < 0 or end > len(data):
            raise ValueError(f"{path}: tensor {t['name']} [{off}, {end}) past the data ({len(data)} bytes)")
        tensors[t["name"]] = np.frombuffer(data[off:end], dtype=dt).reshape(shape).copy()
    return header.get("config", {}), tensors, header


def write_cdts(path, config, tensors, extra=None):
    """Writes {name: array} (float -> f32, int -> i32, bool/uint8 -> u8) in insertion order,
    each tensor 64-byte aligned in the data section. extra: more top-level header keys."""
    entries, chunks, off = [], [], 0
    for name, a in tensors.items():
        a = np.asarray(a.detach().cpu().numpy() if torch.is_tensor(a) else a)
        if a.dtype == np.bool_ or a.dtype == np.uint8:
            a, dt = a.astype("u1"), "u8"
        elif np.issubdtype(a.dtype, np.integer):
            a, dt = a.astype("<i4"), "i32"
        else:
            a, dt = a.astype("<f4"), "f32"
        pad = (-off) % 64
        if pad:
            chunks.append(b"\0" * pad)
            off += pad
        entries.append({"name": name, "dtype": dt, "shape": list(a.shape), "offset": off})
        raw = np.ascontiguousarray(a).tobytes()
        chunks.append(raw)
        off += len(raw)
    header = {"version": 1, "config": config, "tensors": entries}
    if extra:
        header.update(extra)
    hj = json.dumps(header).encode("utf-8")
    with open(path, "wb") as f:
        f.write(CDTS_MAGIC + struct.pack("<Q", len(hj)) + hj)
        for c in chunks:
            f.write(c)
