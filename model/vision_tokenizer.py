"""IBQ vision tokenizer of Emu3.5 (``BAAI/Emu3.5-VisionTokenizer``): image <-> grid of discrete codes.

Architecture is the taming-transformers VQGAN Encoder/Decoder, so the official ``model.ckpt`` state dict loads 1:1.
The quantizer is Index Backpropagation Quantization (IBQ): code = argmax_n <z, e_n> (inner product, not L2 distance).

Checkpoint directory (official layout):
    config.yaml   top-level keys are the IBQ constructor args: ddconfig, n_embed, embed_dim (+ ignored training keys)
    model.ckpt    torch state dict (loaded with weights_only=True), or model.safetensors

Pixels are RGB, CHW, float in [-1, 1] (x / 127.5 - 1).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import Tensor

CONFIG_NAME = "config.yaml"
CKPT_NAME = "model.ckpt"
SAFETENSORS_NAME = "model.safetensors"

# encode() scores at most this many (position, code) pairs at once: [rows, n_embed] fp32 logits stay ~256 MB.
_ARGMAX_CHUNK_ELEMS = 2**26

# ddconfig keys some taming configs carry; any other value than these changes the architecture, which we don't build.
_FIXED_DDCONFIG = {
    "resamp_with_conv": True,
    "tanh_out": False,
    "give_pre_end": False,
    "attn_type": "vanilla",
    "use_linear_attn": False,
}


# ----------------------------------------------------------------------------------------------------------------------
# config


@dataclass
class VisionTokenizerConfig:
    """Mirror of config.yaml: ``ddconfig`` fields flattened, plus ``n_embed`` (codebook size) and ``embed_dim``."""

    n_embed: int
    embed_dim: int
    z_channels: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    resolution: int = 256  # nominal; only decides which levels get attention (curr_res in attn_resolutions)
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = False
    dropout: float = 0.0

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> VisionTokenizerConfig:
        """Validate a config.yaml dict; raises ValueError naming the bad field. Unknown top-level keys
        (beta, use_entropy_loss, ...) are training-only and ignored."""

        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"vision tokenizer config: field '{field}' {why}")

        def get(src: dict, key: str, prefix: str = "", default=...):
            if key not in src and default is ...:
                raise bad(prefix + key, "is missing")
            return src.get(key, default)

        def pos_int(src: dict, key: str, prefix: str = "ddconfig.") -> int:
            v = get(src, key, prefix)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise bad(prefix + key, f"must be a positive int, got {v!r}")
            return v

        def int_list(key: str, allow_empty: bool) -> tuple[int, ...]:
            v = get(dd, key, "ddconfig.")
            ok = isinstance(v, (list, tuple)) and (allow_empty or len(v) > 0)
            if not ok or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in v):
                raise bad("ddconfig." + key, f"must be a list of positive ints, got {v!r}")
            return tuple(v)

        if not isinstance(d, dict):
            raise ValueError(f"vision tokenizer config must be a mapping, got {type(d).__name__}")
        dd = get(d, "ddconfig")
        if not isinstance(dd, dict):
            raise bad("ddconfig", f"must be a mapping, got {type(dd).__name__}")
        for k, v in _FIXED_DDCONFIG.items():
            if dd.get(k, v) != v:
                raise bad("ddconfig." + k, f"= {dd[k]!r} is unsupported (need {v!r})")
        ints = ("z_channels", "ch", "num_res_blocks", "resolution", "in_channels", "out_ch")
        cfg = cls(
            n_embed=pos_int(d, "n_embed", ""),
            embed_dim=pos_int(d, "embed_dim", ""),
            **{k: pos_int(dd, k) for k in ints},
            ch_mult=int_list("ch_mult", allow_empty=False),
            attn_resolutions=int_list("attn_resolutions", allow_empty=True),
            double_z=get(dd, "double_z", default=False),
            dropout=get(dd, "dropout", default=0.0),
        )
        if not isinstance(cfg.double_z, bool):
            raise bad("ddconfig.double_z", f"must be a bool, got {cfg.double_z!r}")
        if cfg.double_z:  # quant_conv is Conv2d(z_channels, embed_dim): a 2*z_channels encoder output can't feed it
            raise bad("ddconfig.double_z", "must be false for a VQ tokenizer")
        if isinstance(cfg.dropout, bool) or not isinstance(cfg.dropout, (int, float)) or not 0 <= cfg.dropout < 1:
            raise bad("ddconfig.dropout", f"must be a float in [0, 1), got {cfg.dropout!r}")
        for c in (cfg.ch, *(cfg.ch * m for m in cfg.ch_mult)):
            if c % 32:  # every GroupNorm has 32 groups
                raise bad("ddconfig.ch", f"* ch_mult gives {c} channels, not divisible by 32 (GroupNorm groups)")
        cfg.dropout = float(cfg.dropout)
        return cfg

    def to_dict(self) -> dict:
        """The config.yaml dict (the official IBQ constructor kwargs)."""
        dd = dataclasses.asdict(self)
        top = {"n_embed": dd.pop("n_embed"), "embed_dim": dd.pop("embed_dim")}
        dd["ch_mult"], dd["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return {"ddconfig": dd, **top}


def tiny_vision_config(
    n_embed: int = 1024,
    embed_dim: int = 8,
    ch: int = 32,
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
    num_res_blocks: int = 1,
    z_channels: int = 8,
    attn_resolutions: Sequence[int] = (16,),
    resolution: int = 256,
) -> VisionTokenizerConfig:
    """Small random-init config for tests/examples: same 5-level layout and /16 downsampling as the official one."""
    return VisionTokenizerConfig(
        n_embed=n_embed,
        embed_dim=embed_dim,
        z_channels=z_channels,
        ch=ch,
        ch_mult=tuple(ch_mult),
        num_res_blocks=num_res_blocks,
        attn_resolutions=tuple(attn_resolutions),
        resolution=resolution,
    )


# ----------------------------------------------------------------------------------------------------------------------
# taming-transformers building blocks (module names are the state-dict keys)


def Normalize(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.norm1 = Normalize(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = Normalize(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # [B,Cin,H,W] -> [B,Cout,H,W]
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, scaled by C^-0.5."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = Normalize(c)
        self.q, self.k, self.v = (nn.Conv2d(c, c, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:  # [B,C,H,W]
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(2, 3) for m in (self.q, self.k, self.v))  # [B,1,HW,C]
        h = F.scaled_dot_product_attention(q, k, v)  # default scale = C^-0.5; [B,1,HW,C]
        h = h.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:  # [B,C,H,W] -> [B,C,H/2,W/2]
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as in taming


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [B,C,H,W] -> [B,C,2H,2W]
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(c, c, dropout), AttnBlock(c), ResnetBlock(c, c, dropout)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: VisionTokenizerConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        c_in, res = cfg.ch, cfg.resolution
        for i, m in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(c_in, cfg.ch * m, cfg.dropout))
                c_in = cfg.ch * m
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(c_in))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_in)
                res //= 2
            self.down.append(level)
        self.mid = _mid(c_in, cfg.dropout)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, padding=1)  # double_z is rejected by the config

    def forward(self, x: Tensor) -> Tensor:  # [B,3,H,W] -> [B,z,H/f,W/f]
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VisionTokenizerConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        c_in, res = cfg.ch * cfg.ch_mult[-1], cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = _mid(c_in, cfg.dropout)
        up = []
        for i in reversed(range(n)):  # built deepest-first, stored so that self.up[i] is level i (taming)
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(c_in, cfg.ch * cfg.ch_mult[i], cfg.dropout))
                c_in = cfg.ch * cfg.ch_mult[i]
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(c_in))
            if i != 0:
                level.upsample = Upsample(c_in)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:  # [B,z,h,w] -> [B,3,h*f,w*f]
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class IBQuantizer(nn.Module):
    """IBQ codebook lookup. Inference only: the straight-through training path is not needed to tokenize."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)  # [N,D]

    def forward(self, z: Tensor) -> Tensor:
        """z [B,D,h,w] -> codes [B,h,w] = argmax_n <z, e_n>, in fp32 and chunked so N=131072 fits in memory."""
        B, D, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, D).float()  # [B*h*w, D]
        e = self.embedding.weight.float()  # [N,D]
        rows = max(1, _ARGMAX_CHUNK_ELEMS // e.shape[0])
        codes = torch.cat([(zc @ e.T).argmax(dim=1) for zc in zf.split(rows)])  # [B*h*w]
        return codes.view(B, h, w)

    def embed(self, codes: Tensor) -> Tensor:  # codes [B,h,w] -> z_q [B,D,h,w]
        return self.embedding(codes).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------------------------------
# the tokenizer


class VisionTokenizer(nn.Module):
    """Emu3.5 IBQ tokenizer: [B,3,H,W] pixels in [-1,1] <-> [B,H/16,W/16] codes in [0, n_embed)."""

    def __init__(self, config: VisionTokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.quantize = IBQuantizer(config.n_embed, config.embed_dim)
        self.eval()

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    # --- tensors ---

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [B,3,H,W] float in [-1,1], H and W multiples of downsample_factor -> codes [B,H/f,W/f] int64."""
        f, c = self.downsample_factor, self.config.in_channels
        if images.ndim != 4 or images.shape[1] != c:
            raise ValueError(f"encode expects images of shape [B,{c},H,W], got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % f or W % f or H == 0 or W == 0:
            raise ValueError(f"encode: H and W must be positive multiples of {f} (use smart_resize), got {H}x{W}")
        p = self.quant_conv.weight
        z = self.quant_conv(self.encoder(images.to(p.device, p.dtype)))  # [B,D,H/f,W/f]
        return self.quantize(z)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes [B,h,w] ints in [0, n_embed) -> images [B,3,h*f,w*f] float clamped to [-1,1]."""
        n = self.config.n_embed
        if codes.ndim != 3 or codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"decode expects integer codes of shape [B,h,w], got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= n):
            raise ValueError(f"decode: codes must be in [0, {n}), got range [{codes.min()}, {codes.max()}]")
        z_q = self.quantize.embed(codes.to(self.quant_conv.weight.device, torch.long))  # [B,D,h,w]
        return self.decoder(self.post_quant_conv(z_q)).clamp(-1.0, 1.0)

    # --- PIL ---

    def encode_pil(self, images: Image.Image | Sequence[Image.Image], image_area: int) -> Tensor | list[Tensor]:
        """Smart-resize to ~image_area pixels, then encode.

        One image -> LongTensor [1,h,w]. A list -> list of [h,w] LongTensors, one per image (sizes may differ);
        images that resize to the same size share one forward pass.
        """
        f = self.downsample_factor
        if isinstance(images, Image.Image):
            return self.encode(pil_to_tensor(smart_resize(images, image_area, f))[None])
        xs = [pil_to_tensor(smart_resize(im, image_area, f)) for im in images]  # each [3,H,W]
        out: list[Tensor | None] = [None] * len(xs)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(xs):
            by_size.setdefault(tuple(x.shape), []).append(i)
        for idx in by_size.values():
            codes = self.encode(torch.stack([xs[i] for i in idx]))  # [b,h,w]
            for i, c in zip(idx, codes):
                out[i] = c
        return out

    def decode_pil(self, codes: Tensor | Sequence[Tensor]) -> list[Image.Image]:
        """codes [h,w], [B,h,w] or a list of [h,w] (as returned by encode_pil) -> list of RGB images."""
        if isinstance(codes, Tensor):
            codes = codes[None] if codes.ndim == 2 else codes
            return [tensor_to_pil(x) for x in self.decode(codes)]
        return [tensor_to_pil(self.decode(torch.as_tensor(c)[None])[0]) for c in codes]

    # --- checkpoints ---

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> VisionTokenizer:
        """Load the official directory layout (config.yaml + model.ckpt, or model.safetensors)."""
        path = Path(path)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"vision tokenizer: no {CONFIG_NAME} in {path}")
        with open(cfg_file) as fh:
            config = VisionTokenizerConfig.from_dict(yaml.safe_load(fh))
        state = _load_state_dict(path)
        with torch.device("meta"):  # no wasted random init; weights are assigned below
            model = cls(config)
        expected = model.state_dict()
        missing = sorted(expected.keys() - state.keys())
        unexpected = sorted(state.keys() - expected.keys())
        shapes = [(k, list(state[k].shape), list(v.shape)) for k, v in expected.items() if k in state]
        bad = [f"{k}: checkpoint {got} vs model {want}" for k, got, want in shapes if got != want]
        if missing or unexpected or bad:
            msg = [f"vision tokenizer checkpoint in {path} does not match config.yaml:"]
            msg += [f"  missing: {', '.join(missing)}"] if missing else []
            msg += [f"  unexpected: {', '.join(unexpected)}"] if unexpected else []
            msg += [f"  shape mismatch: {b}" for b in bad]
            raise ValueError("\n".join(msg))
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, path: str | Path, format: str = "ckpt") -> None:
        """Write config.yaml + model.ckpt (plain torch.save of the state dict) or model.safetensors.

        The other weight file, if present, is removed: from_pretrained prefers model.ckpt and must not load a stale one.
        """
        if format not in ("ckpt", "safetensors"):
            raise ValueError(f"save_pretrained: format must be 'ckpt' or 'safetensors', got {format!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / CONFIG_NAME, "w") as fh:
            yaml.safe_dump(self.config.to_dict(), fh, sort_keys=False)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if format == "ckpt":
            torch.save(state, path / CKPT_NAME)
            (path / SAFETENSORS_NAME).unlink(missing_ok=True)
        else:
            from safetensors.torch import save_file

            save_file(state, str(path / SAFETENSORS_NAME))
            (path / CKPT_NAME).unlink(missing_ok=True)


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors from model.ckpt (preferred: it is the official file) or model.safetensors; drops training `loss.*`."""
    if (path / CKPT_NAME).is_file():
        file = path / CKPT_NAME
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{file}: refused to unpickle a non-tensor object (weights_only=True): {e}") from e
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # lightning-style checkpoint
        if not isinstance(obj, dict):
            raise ValueError(f"{file}: expected a state dict, got {type(obj).__name__}")
    elif (path / SAFETENSORS_NAME).is_file():
        from safetensors.torch import load_file

        file, obj = path / SAFETENSORS_NAME, load_file(str(path / SAFETENSORS_NAME))
    else:
        raise FileNotFoundError(f"vision tokenizer: neither {CKPT_NAME} nor {SAFETENSORS_NAME} in {path}")
    state = {k: v for k, v in obj.items() if not k.startswith("loss.")}
    non_tensor = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if non_tensor:
        raise ValueError(f"{file}: non-tensor entries in state dict: {', '.join(non_tensor)}")
    return state


def write_random_vision_tokenizer(
    path: str | Path, config: VisionTokenizerConfig | None = None, seed: int = 0, format: str = "ckpt"
) -> VisionTokenizer:
    """Random-init tokenizer (deterministic from seed, global RNG untouched) saved in the official layout.

    Codebook rows are L2-normalised: with inner-product argmax, a random row with a large norm would win for most
    inputs (including other rows), whereas unit rows make quantization idempotent, quantize(e[c]) == c, since
    <e_c, e_c> = 1 > <e_c, e_n> for every distinct unit row e_n.
    """
    config = config or tiny_vision_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTokenizer(config)
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(F.normalize(model.quantize.embedding.weight, dim=1))
    model.save_pretrained(path, format=format)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# images


def smart_resize(image: Image.Image, image_area: int, factor: int = 16) -> Image.Image:
    """Resize to ~image_area pixels keeping the aspect ratio, each side a multiple of factor (as the Emu3.5 release)."""
    if image_area <= 0 or factor <= 0:
        raise ValueError(f"smart_resize: image_area and factor must be positive, got {image_area}, {factor}")
    w, h = image.size
    aspect = w / h
    new_h = int(math.sqrt(image_area / aspect))
    new_w = int(new_h * aspect)
    new_h = max(factor, (new_h + factor // 2) // factor * factor)  # nearest multiple, at least one
    new_w = max(factor, (new_w + factor // 2) // factor * factor)
    return image.resize((new_w, new_h), Image.BICUBIC)


def pil_to_tensor(image: Image.Image) -> Tensor:
    """PIL image -> float32 [3,H,W] RGB in [-1,1]."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H,W,3] in [0,255]
    return torch.from_numpy(x / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def tensor_to_pil(x: Tensor) -> Image.Image:
    """[3,H,W] in [-1,1] -> RGB PIL image (clamped, rounded to uint8)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"tensor_to_pil expects [3,H,W], got {tuple(x.shape)}")
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [3,H,W]
    return Image.fromarray(x.permute(1, 2, 0).numpy())
