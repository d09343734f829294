"""fast.py: everything that only makes HiT run faster, or deploys it. Skip on a first read.

The network files (levit.py, attention_bias.py, bridge.py, hit.py) hold the paper's
network with one forward path per class. This file holds the rest: the machine queries
the speed paths depend on, the exact inference rewrites (folded BatchNorms, merged corner
towers, folded proj1, packed GEMMs), reduced precision (int8, bf16, fp16), torch.compile,
CUDA graphs, the table of inference modes and `prepare`, which turns a HiT into a fast
callable. It works from outside: it replaces whole submodules or wraps the model, so the
paper classes carry no branches for it. track.py and bench.py import it; the network
files never do.
"""
import os

import torch


# ----------------------------------------------------------------------------- the machine
def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU feature flags Linux reports (an empty set elsewhere)."""
    try:
        with open(cpuinfo) as f:
            return set(next((line.split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16). There
    oneDNN runs bf16 convolutions and GEMMs ~1.4-2x faster than fp32 (measured on an AMD
    EPYC: the patch embedding 0.90 -> 0.65 ms, a 320x256x512 GEMM 0.42 -> 0.21 ms);
    elsewhere it emulates them, slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo))


def usable_cores():
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_device():
    """The fastest device present: cuda, else mps, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


