#!/usr/bin/env bash
# One line naming this machine for a results file: cores, CPU model, the widest vector ISA
# (AVX-512 with bfloat16 dot products / AVX-512 / AVX2 / older), e.g. "2-core AMD EPYC, AVX2".
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has() { [[ " $flags " == *" $1 "* ]]; }
if has avx512_bf16; then isa="AVX-512 + AVX512-BF16"
elif has avx512f; then isa="AVX-512"
elif has avx2; then isa="AVX2"
else isa="no AVX2"
fi
model=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')
echo "$(nproc)-core ${model:-$(uname -m)}, $isa"
