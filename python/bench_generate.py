"""Prints the generation benchmark: sumflow's figures from a run manifest, and Python
transformers' `generate` one dialogue at a time (the lab's loop) on the same model and rows,
measured now, on the same machine.

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

    lab, batched = stages["lab-loop"]["stats"], stages["batched"]["stats"]
    print(f"generation, {len(dialogues)} dialogues x {max_new} new tokens, CPU ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})")
    print(f"{'path':44} {'dialogues/s':>12} {'new tok/s':>10} {'vs lab loop (Python)':>21}")
    py_rate = len(dialogues) / python_s
    for name, rate, toks in [
        ("Python transformers, one at a time (lab)", py_rate, new / python_s),
        ("sumflow generate, one at a time", lab["dialogues_per_s"], lab["new_tokens_per_s"]),
        ("sumflow generate, batched", batched["dialogues_per_s"], batched["new_tokens_per_s"]),
    ]:
        print(f"{name:44} {rate:12.2f} {toks:10.0f} {rate / py_rate:20.2f}x")
    print(f"batched vs sumflow one at a time: {batched['dialogues_per_s'] / lab['dialogues_per_s']:.2f}x")


if __name__ == "__main__":
    main()
