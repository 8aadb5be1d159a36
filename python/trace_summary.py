"""Condenses a Chrome trace from libtorch's profiler (`SUMFLOW_TRACE=DIR`, three training steps)
into the few figures that say where a step's time goes:

- the host: operators dispatched per step, the operators with the most self time, and the CUDA
  runtime calls (launches; syncs and copies, each of which makes the host wait for the device);
- the device: how much of the traced span it was busy, kernels per step, the kernels and kinds
  of kernel that took the most time, and the idle gaps between kernels.

usage: trace_summary.py TRACE.json [STEPS]   (STEPS: steps in the trace, 3 by default)
"""
import json
import re
import sys
from collections import defaultdict

KINDS = [  # (kind, pattern on the kernel name), first match wins
    ("attention", r"fmha|flash|attention|efficient"),
    ("matrix product", r"gemm|cutlass|xmma|nvjet|cublas|sm\d+_"),
    ("softmax", r"softmax"),
    ("norm", r"norm"),
    ("dropout / random", r"bernoulli|philox|dropout|fused_dropout"),
    ("reduction", r"reduce|sum|mean|norm"),
    ("copy / cast", r"copy|cast|to_copy|memcpy"),
    ("optimizer", r"adam|foreach|lerp|addcmul|addcdiv"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise"),
]


def kind_of(name):
    low = name.lower()
    return next((k for k, pattern in KINDS if re.search(pattern, low)), "other")


def self_times(events):
    """Self time per operator (its duration less its children's), nesting read per thread."""
    out = defaultdict(float)
    by_thread = defaultdict(list)
    for e in events:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    top_level = 0
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, name, child time]
        for e in evs:
            while stack and stack[-1][0] <= e["ts"]:
                end, name, child = stack.pop()
                out[name] -= child
            if stack:
                stack[-1][2] += e["dur"]
            else:
                top_level += 1
            out[e["name"]] += e["dur"]
            stack.append([e["ts"] + e["dur"], e["name"], 0.0])
        for end, name, child in stack:
            out[name] -= child
    return out, top_level


def busy_and_gaps(kernels):
    """Union of kernel intervals (µs) and the idle gaps between them."""
    spans = sorted((k["ts"], k["ts"] + k["dur"]) for k in kernels)
    busy, gaps = 0.0, []
    start, end = spans[0]
    for s, e in spans[1:]:
        if s > end:
            busy += end - start
            gaps.append(s - end)
            start, end = s, e
        else:
            end = max(end, e)
    return busy + end - start, gaps


def main():
    path = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    events = [e for e in json.load(open(path))["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    cat = lambda c: [e for e in events if e.get("cat", "").lower() == c]
    ops, kernels, runtime = cat("cpu_op"), cat("kernel"), cat("cuda_runtime") + cat("cuda_driver")
    copies = cat("gpu_memcpy") + cat("gpu_memset")
    t0 = min(e["ts"] for e in ops)
    t1 = max(e["ts"] + e["dur"] for e in ops + kernels)
    span = t1 - t0
    ms = lambda us: us / 1e3 / steps
    print(f"trace {path.rsplit('/', 1)[-1]}: {steps} steps, {span / 1e3 / steps:.1f} ms per step")

    own, top_level = self_times(ops)
    print(f"host: {top_level / steps:.0f} top-level operators per step ({len(ops) / steps:.0f} with nested ones)")
    print(f"  {'operator (self time)':48} {'ms/step':>8} {'calls/step':>10}")
    calls = defaultdict(int)
    for e in ops:
        calls[e["name"]] += 1
    for name, t in sorted(own.items(), key=lambda x: -x[1])[:12]:
        print(f"  {name[:48]:48} {ms(t):8.2f} {calls[name] / steps:10.0f}")
    if runtime:
        total, count = defaultdict(float), defaultdict(int)
        for e in runtime:
            total[e["name"]] += e["dur"]
            count[e["name"]] += 1
        print(f"  {'CUDA runtime call':48} {'ms/step':>8} {'calls/step':>10}")
        for name, t in sorted(total.items(), key=lambda x: -x[1])[:8]:
            print(f"  {name[:48]:48} {ms(t):8.2f} {count[name] / steps:10.0f}")

    if not kernels:
        print("device: no kernels in this trace (a CPU run)")
        return
    busy, gaps = busy_and_gaps(kernels + copies)
    big = [g for g in gaps if g >= 20]
    print(f"device: busy {ms(busy):.1f} ms per step ({100 * busy / span:.0f}% of the span), "
          f"{len(kernels) / steps:.0f} kernels per step (mean {sum(k['dur'] for k in kernels) / len(kernels):.1f} µs); "
          f"idle gaps ≥ 20 µs: {len(big) / steps:.0f} per step, {ms(sum(big)):.1f} ms per step "
          f"(largest {max(gaps, default=0) / 1e3:.1f} ms)")
    by_kind, by_name, n_name = defaultdict(float), defaultdict(float), defaultdict(int)
    for k in kernels:
        by_kind[kind_of(k["name"])] += k["dur"]
        by_name[k["name"]] += k["dur"]
        n_name[k["name"]] += 1
    kernel_time = sum(by_kind.values())
    print(f"  {'kind of kernel':48} {'ms/step':>8} {'share':>6}")
    for kind, t in sorted(by_kind.items(), key=lambda x: -x[1]):
        print(f"  {kind:48} {ms(t):8.2f} {100 * t / kernel_time:5.0f}%")
    print(f"  {'kernel':48} {'ms/step':>8} {'calls/step':>10} {'mean µs':>8}")
    for name, t in sorted(by_name.items(), key=lambda x: -x[1])[:15]:
        print(f"  {name[:48]:48} {ms(t):8.2f} {n_name[name] / steps:10.0f} {t / n_name[name]:8.1f}")
    if copies:
        print(f"  copies and fills: {len(copies) / steps:.0f} per step, {ms(sum(c['dur'] for c in copies)):.2f} ms per step")


if __name__ == "__main__":
    main()
