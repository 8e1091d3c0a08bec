"""`emu35-robot` command line: `model info`, `demo`."""

from __future__ import annotations

import argparse
import sys


def _model_info(args: argparse.Namespace) -> int:
    from model.info import format_info, inspect_checkpoint

    info = inspect_checkpoint(args.path)
    device_bytes = int(args.device_memory_gib * 2**30) if args.device_memory_gib else None
    print(
        format_info(
            info,
            dtype=args.dtype,
            context=args.context,
            streams=args.streams,
            device=args.device,
            device_bytes=device_bytes,
        )
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, checkpoint=args.checkpoint, new_tokens=args.new_tokens, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emu35-robot", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("model", help="inspect checkpoints").add_subparsers(dest="model_command", required=True)
    info = m.add_parser("info", help="parameters, dtypes, bytes and the memory a device needs, without loading")
    info.add_argument("path", help="checkpoint directory (config.json + safetensors)")
    info.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32", "float8_e4m3fn"])
    info.add_argument("--context", type=int, default=32768, help="tokens per stream to size the KV cache for")
    info.add_argument("--streams", type=int, default=1, help="concurrent requests (each 2 rows with CFG)")
    info.add_argument("--device", default=None, help="e.g. cuda:0 or cpu: say whether it fits")
    info.add_argument("--device-memory-gib", type=float, default=None, help="device memory when it cannot be read")
    info.set_defaults(func=_model_info)

    d = sub.add_parser("demo", help="end-to-end round trip: checkpoint files -> tokenizers -> model -> decoding")
    d.add_argument("--out", default="emu35_demo", help="output directory")
    d.add_argument("--checkpoint", default=None, help="bundle dir with model/, tokenizer/, vision_tokenizer/")
    d.add_argument("--new-tokens", type=int, default=24)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"emu35-robot: error: {e}", file=sys.stderr)
        return 2
