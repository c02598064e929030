"""Rewrite a CUDA source for cuemu: include cuemu.h first, turn every
`kernel<<<cfg>>>(args)` into `::cuemu::launch(__FILE__, __LINE__, "kernel", cfg)(lambda, args)`
every `__shared__` declaration into a static that the first thread of each block poisons,
and every `extern __shared__ T name[];` into a pointer to the block's dynamic shared memory.

The kernel expression is taken back from `<<<` over identifiers, `::` and balanced
template argument lists; the launch arguments up to `>>>`. Nothing else changes, so
line numbers stay those of the original file (the #line directive keeps file names).

    python rewrite.py SRC_DIR OUT_DIR     # every *.cu / *.cuh of SRC_DIR
"""
import pathlib
import re
import sys

IDENT = re.compile(r"[A-Za-z0-9_:]")
# `extern __shared__ [__align__(n)] TYPE NAME[];`: dynamic shared memory, a pointer into the
# block's launch-sized buffer (cuemu::dynamic_shared); the line count does not change
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?([\w:<>, ]+?)\s*(\w+)\s*\[\s*\]\s*;")


def _callee_start(src, end):
    i = end
    while i > 0 and src[i - 1].isspace():
        i -= 1
    while True:
        if i > 0 and src[i - 1] == ">":  # template arguments
            depth, i = 0, i - 1
            while i >= 0:
                if src[i] == ">":
                    depth += 1
                elif src[i] == "<":
                    depth -= 1
                    if depth == 0:
                        break
                i -= 1
            while i > 0 and src[i - 1].isspace():
                i -= 1
        j = i
        while j > 0 and IDENT.match(src[j - 1]):
            j -= 1
        if j == i:
            return i
        i = j
        if not (i > 0 and src[i - 1] == ">"):
            return i


# `__shared__ [__align__(n)] TYPE NAME[dims];`: a static (as before) followed by a call that
# poisons it when the first thread of a block passes the declaration. GCC drops a section
# attribute on the statics of templates, so poisoning one section at block start missed
# every templated kernel's shared memory; no thread can touch a variable before its
# declaration, so the first pass is early enough.
SHARED = re.compile(r"(?<![\w])__shared__\s+((?:__align__\s*\([^)]*\)\s*)?)((?:const\s+)?[\w:<>]+)\s+(\w+)\s*((?:\[[^\]]*\]\s*)*);")


def rewrite(src, path):
    src = EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* const {m.group(2)} = "
                                      f"::cuemu::dynamic_shared<{m.group(1)}>(__FILE__, __LINE__);", src)
    src = SHARED.sub(lambda m: f"{m.group(1)}static {m.group(2)} {m.group(3)}{m.group(4)}; "
                               f"::cuemu::shared_declared(&{m.group(3)}, sizeof({m.group(3)}));", src)
    out, pos, count = [], 0, 0
    while True:
        k = src.find("<<<", pos)
        if k < 0:
            break
        start = _callee_start(src, k)
        callee = src[start:k].strip()
        close = src.find(">>>", k)
        cfg = src[k + 3 : close].strip()
        paren = close + 3
        while src[paren].isspace():
            paren += 1
        if src[paren] != "(" or not callee:
            raise SystemExit(f"{path}: cannot parse the launch at offset {k}")
        rest = paren + 1
        while src[rest].isspace():
            rest += 1
        sep = "" if src[rest] == ")" else ", "
        name = callee.replace('"', "")
        out.append(src[pos:start])
        # Newlines inside the launch configuration are kept so line numbers do not move.
        out.append(
            f'::cuemu::launch(__FILE__, __LINE__, "{name}", {cfg})'
            f"([](auto&&... cuemu_a) {{ {callee}(cuemu_a...); }}{sep}"
        )
        pos = paren + 1
        count += 1
    out.append(src[pos:])
    return '#include "cuemu.h"\n' + f'#line 1 "{path}"\n' + "".join(out), count


def main(src_dir, out_dir, quiet=False):
    src_dir, out_dir = pathlib.Path(src_dir), pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted(list(src_dir.glob("*.cu")) + list(src_dir.glob("*.cuh"))):
        text, n = rewrite(p.read_text(), str(p))
        target = out_dir / (p.name + (".cpp" if p.suffix == ".cu" else ""))
        if not target.exists() or target.read_text() != text:  # keep mtimes: no needless rebuilds
            target.write_text(text)
        if not quiet:
            print(f"{p.name}: {n} launch(es) -> {target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
