"""Prints the generation benchmark: sumflow's figures for every `generate` stage of a run
manifest, and Python transformers' `generate` one dialogue at a time (the lab's loop) on the
same model, measured now, on the same machine, on every EVERY-th test row (a sample when the lab
loop would take too long; the figures are rates, so the ratios still compare like with like).

usage: bench_generate.py MANIFEST MODEL_DIR TEST_CSV EVERY MAX_NEW_TOKENS
"""
import csv
import json
import platform
import sys
import time

import torch
from transformers import T5ForConditionalGeneration
from tokenizers import Tokenizer

PROMPT = "Summarize the following conversation.\n\n{dialogue}\n\nSummary: "


def main():
    manifest, model_dir, test_csv, every, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    stages = {s["id"]: s for s in json.load(open(manifest))["stages"]}
    rows = [r for i, r in enumerate(csv.DictReader(open(test_csv, newline="", encoding="utf-8"))) if i % every == 0]
    dialogues = list(dict.fromkeys(r["dialogue"] for r in rows))
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    model = T5ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    new = 0
    with torch.no_grad():
        for d in dialogues:  # the lab's loop
            ids = torch.tensor([tok.encode(PROMPT.format(dialogue=d)).ids[:512]])
            out = model.generate(ids, max_new_tokens=max_new, num_beams=1, do_sample=False)
            new += out.shape[1] - 1
    python_s = time.perf_counter() - t0

    print(f"generation, {max_new} new tokens per summary, CPU ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})")
    print(f"{'path':52} {'dialogues':>9} {'seconds':>8} {'dialogues/s':>12} {'new tok/s':>10} {'vs lab loop':>12}")
    py_rate = len(dialogues) / python_s
    print(f"{'Python transformers, one at a time (lab, fp32)':52} {len(dialogues):9d} {python_s:8.1f} {py_rate:12.2f} {new / python_s:10.0f} {1:11.2f}x")
    for sid, s in stages.items():
        if s["kind"] != "generate" or "stats" not in s:
            continue
        st, p = s["stats"], s.get("params", {})
        mode = "one at a time" if p.get("one_at_a_time") else "batched"
        name = f"sumflow {sid} ({mode}, {p.get('dtype', 'auto')})"
        rate = st["dialogues_per_s"]
        print(f"{name:52} {int(st['dialogues']):9d} {st['generation_seconds']:8.1f} {rate:12.2f} {st['new_tokens_per_s']:10.0f} {rate / py_rate:11.2f}x")


if __name__ == "__main__":
    main()
