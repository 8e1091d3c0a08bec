"""Compile a decode GEMM kernel for sm_90 on a machine without a GPU and count the instructions of its main loop.

Needs only Triton (its bundled ptxas and cuobjdump); no CUDA device, no device time. How 2026-11-30's float8 work
was steered: the loop of model/skinny_mm.py's float8 kernel issues 245 instructions per 8,192 weights against 111 for
bf16, and model/fp8_gluon.py's loop has no shared-memory traffic or barrier (benchmarks/RESULTS.md).

    python benchmarks/sass_loop.py skinny --dtype fp8 --config 32,256,4,4,4     # BLOCK_N,BLOCK_K,warps,stages,SLICES
    python benchmarks/sass_loop.py gluon --config 16,128,8,1,16,0 --rows 8        # BLOCK_N,KS,S,WN,KW,PREFETCH
    python benchmarks/sass_loop.py gluon --config 16,128,8,1,16,0 --sass out.sass # also keep the SASS
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
POINTERS = ["x_ptr", "w_ptr", "s_ptr", "y_ptr"]


def compile_sm90(fn, signature: dict, constexprs: dict, warps: int, stages: int, gluon: bool = False):
    """A CompiledKernel for sm_90; pointers and N, K marked 16-divisible, as Triton specializes real launches."""
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in [*POINTERS, "N", "K"]}
    if gluon:
        from triton.experimental.gluon._runtime import GluonASTSource as Source
    else:
        Source = ASTSource
    src = Source(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    target = GPUTarget("cuda", 90, 32)
    return triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})


def loop_histogram(sass: str) -> collections.Counter:
    """Opcodes between the target and the source of the longest backward branch (the main loop)."""
    lines = sass.splitlines()
    at = {}
    for i, line in enumerate(lines):
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/", line)
        if m:
            at[int(m.group(1), 16)] = i
    best = (0, 0)
    for i, line in enumerate(lines):
        m = re.search(r"/\*([0-9a-f]{4,})\*/.*BRA (0x[0-9a-f]+)", line)
        if m and int(m.group(2), 16) < int(m.group(1), 16) and int(m.group(2), 16) in at:
            start = at[int(m.group(2), 16)]
            best = max(best, (start, i), key=lambda se: se[1] - se[0])
    ops = collections.Counter()
    for line in lines[best[0] : best[1] + 1]:
        m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            ops[m.group(1)] += 1
    return ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernel", choices=["skinny", "gluon"])
    ap.add_argument("--config", required=True, help="comma list (see above)")
    ap.add_argument("--dtype", default="fp8", choices=["fp8", "bf16"], help="weights (skinny only; gluon: fp8)")
    ap.add_argument("--rows", type=int, default=8, help="gluon: padded rows, 8 or 16")
    ap.add_argument("--sass", default=None, help="write the whole SASS here")
    args = ap.parse_args()
    c = [int(v) for v in args.config.split(",")]
    sig = {"x_ptr": "*bf16", "w_ptr": "*fp8e4nv", "s_ptr": "*fp32", "y_ptr": "*bf16"}
    sig |= {"M": "i32", "N": "i32", "K": "i32"}
    if args.kernel == "skinny":
        import model.skinny_mm as sk

        bn, bk, warps, stages, slices = c
        sig["w_ptr"] = "*fp8e4nv" if args.dtype == "fp8" else "*bf16"
        sig["M_BUCKET"] = "i32"
        consts = {"HAS_SCALE": args.dtype == "fp8", "BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": bk, "SLICES": slices,
                  "EVEN_K": True, "F32_DOT": False, "FP8_ASM": True}  # fmt: skip
        k = compile_sm90(sk._skinny_kernel, {**sig, **dict.fromkeys(consts, "constexpr")}, consts, warps, stages)
        weights = bn * bk
    else:
        import model.fp8_gluon as fg

        bn, ks, s, wn, kw, pf = c
        consts = {"BLOCK_N": bn, "KS": ks, "S": s, "WN": wn, "MP": args.rows, "KW": kw, "PREFETCH": pf}
        sig = {**sig, **dict.fromkeys(consts, "constexpr")}
        k = compile_sm90(fg._fp8_mm_kernel, sig, consts, s * wn, 1, gluon=True)
        weights = s * bn * ks
    cubin = Path("/tmp/_sass_loop.cubin")
    cubin.write_bytes(k.asm["cubin"])
    sass = subprocess.run([BIN / "cuobjdump", "-sass", cubin], capture_output=True, text=True, check=True).stdout
    usage = subprocess.run([BIN / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True).stdout
    if args.sass:
        Path(args.sass).write_text(sass)
    ops = loop_histogram(sass)
    total = sum(ops.values())
    print(usage.strip().splitlines()[-1].strip(), f"| shared memory {k.metadata.shared} B")
    print(f"loop: {total} instructions per iteration per thread; the program's iteration covers {weights} weights")
    print(" ".join(f"{op}:{n}" for op, n in ops.most_common()))


if __name__ == "__main__":
    main()
