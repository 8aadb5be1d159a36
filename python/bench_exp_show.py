"""`sumflow exp show` on many runs, against the script a user would write without it.

Usage: bench_exp_show.py SUMFLOW CACHE RUNS

CACHE holds one real run of pipelines/lab-results.yaml; its manifest is the template for RUNS
synthetic runs (each with its own run id, start time, vars and scores), written into
CACHE/runs. Then, best of 5 each: `sumflow exp show --by run --format csv` (a process, start
to exit), `sumflow --version` (the process's start-up alone: loading libtorch's libraries), and
Python reading every manifest with `json` and building the same table (vars that differ, rouge1
per scored column), in this process and as a process of its own. Both tables must agree.
"""

import csv
import glob
import io
import json
import os
import random
import subprocess
import sys
import time


def synthesize(cache, runs):
    paths = sorted(glob.glob(os.path.join(cache, "runs", "*.json")))
    template = json.load(open(paths[-1]))
    rng = random.Random(0)
    for i in range(runs):
        m = json.loads(json.dumps(template))
        m["run_id"] = f"20261201T{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}000Z-{i:06x}"
        m["started"] = f"2026-12-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
        m["vars"]["lr"] = rng.choice([1e-4, 3e-4, 1e-3])
        m["vars"]["rank"] = rng.choice([8, 16, 32, 64])
        for stage in m["stages"]:
            if stage["kind"] == "score":
                for k in stage["stats"]:
                    if ":" in k:
                        stage["stats"][k] = rng.random()
        with open(os.path.join(cache, "runs", m["run_id"] + ".json"), "w") as f:
            json.dump(m, f, indent=2)


def python_table(cache):
    """What a user scripts: every manifest read with json, the same rows and columns."""
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(cache, "runs", "*.json")))]
    names = sorted({k for m in runs for k in m["vars"]})
    varying = [k for k in names if len({json.dumps(m["vars"].get(k)) for m in runs}) > 1]
    columns = []
    for m in runs:
        for s in m["stages"]:
            if s["kind"] == "score":
                for k in s["stats"]:
                    metric, _, column = k.partition(":")
                    if metric == "rouge1" and (s["id"], column) not in columns:
                        columns.append((s["id"], column))
    rows = []
    for m in runs:
        stats = {(s["id"], k): v for s in m["stages"] if s["kind"] == "score" for k, v in s["stats"].items()}
        row = [m["run_id"], m["started"], m["pipeline"]["name"], m["status"]]
        row += [m["vars"].get(k) for k in varying]
        row += [stats.get((sid, "rouge1:" + c)) for sid, c in columns]
        rows.append(row)
    return rows


def best_of(n, f):
    best, value = None, None
    for _ in range(n):
        t0 = time.perf_counter()
        value = f()
        t = time.perf_counter() - t0
        best = t if best is None else min(best, t)
    return best, value


def main():
    if sys.argv[1] == "--table":
        print(len(python_table(sys.argv[2])))
        return
    sumflow, cache, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    synthesize(cache, runs)
    total = len(glob.glob(os.path.join(cache, "runs", "*.json")))
    cmd = [sumflow, "--cache", cache, "exp", "show", "--by", "run", "--format", "csv"]
    t_rust, out = best_of(5, lambda: subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    t_start, _ = best_of(5, lambda: subprocess.run([sumflow, "--version"], check=True, capture_output=True))
    t_py, rows = best_of(5, lambda: python_table(cache))
    script = [sys.executable, os.path.abspath(__file__), "--table", cache]
    t_py_proc, _ = best_of(5, lambda: subprocess.run(script, check=True, capture_output=True))
    ours = list(csv.reader(io.StringIO(out)))[1:]
    assert len(ours) == len(rows) == total, (len(ours), len(rows), total)
    for a, b in zip(ours, rows):
        assert a[0] == b[0], (a[0], b[0])
        assert abs(float(a[-1]) - b[-1]) < 5e-5, (a, b)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(cache, "runs", "*.json")))
    print(f"exp show --by run over {total} run manifests ({size / 2**20:.1f} MiB of JSON), best of 5")
    print(f"{'path':<52}{'seconds':>9}{'runs/s':>10}{'vs Python':>11}")
    rows_out = [
        ("Python json script, process start to exit", t_py_proc),
        ("Python json, in process (no interpreter start)", t_py),
        ("sumflow exp show, process start to exit", t_rust),
        ("sumflow exp show less start-up (--version)", max(t_rust - t_start, 1e-6)),
    ]
    for name, t in rows_out:
        print(f"{name:<52}{t:>9.3f}{total / t:>10.0f}{t_py_proc / t:>10.2f}x")
    print(f"sumflow start-up alone (--version: loading libtorch): {t_start:.3f} s")

if __name__ == "__main__":
    main()
