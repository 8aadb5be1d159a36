"""The lab's Python path, timed on the same model and data as `sumflow bench`: training with
the lab's Trainer settings (bf16 weights on CUDA, every row padded to 512 tokens, batches of
8, AdamW at lr 1e-5 — full — and 1e-3 with PEFT LoRA r 32 on q, v), and generation one
dialogue at a time (the lab's loop). Prints JSON with the same figures as `sumflow bench`.

The Trainer itself needs `accelerate`; this loop does what it does for these settings.
Also transformers' own `generate` on length-sorted, padded batches of 64 (not the lab's code,
the strongest plain-Python baseline), over BATCHED dialogues.
usage: bench_lab.py MODEL_DIR DIALOGSUM_DIR STEPS GENERATE MAX_NEW_TOKENS DEVICE [BATCHED [TRAIN_BATCH]]
(TRAIN_BATCH: rows per training batch, the lab's 8 by default; the flan-t5-base shape at 8 needs
more than 24 GiB in fp32 on the CPU.)
"""
import csv
import json
import sys
import time

import torch
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration

PROMPT = "Summarize the following conversation.\n\n{dialogue}\n\nSummary: "


def reset_peak(device):
    """Starts a new peak: libtorch's allocator on CUDA, the resident set on the CPU (Linux)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_mb(device):
    """Peak since reset_peak, MB: CUDA memory libtorch reserved (sumflow's NVML figure adds the
    CUDA context, a few hundred MB), or the resident set's high-water mark."""
    if device == "cuda":
        return {"peak_gpu_mb": torch.cuda.max_memory_reserved() / 2**20}
    with open("/proc/self/status") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    return {"peak_rss_mb": kb / 1024}


def rows(path):
    return list(csv.DictReader(open(path, newline="", encoding="utf-8")))


def main():
    model_dir, data, steps, n_gen, max_new, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    n_batched = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    rows_per_batch = int(sys.argv[8]) if len(sys.argv) > 8 else 8
    device = "cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    train = rows(f"{data}/train.csv")

    def pad512(ids):
        ids = ids[:512]
        return ids + [0] * (512 - len(ids))

    figures = []
    for method in ("full", "lora"):
        model = T5ForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device)
        lr = 1e-5
        if method == "lora":
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(model, LoraConfig(r=32, lora_alpha=32, target_modules=["q", "v"], lora_dropout=0.05, bias="none", task_type=TaskType.SEQ_2_SEQ_LM))
            lr = 1e-3
        model.train()
        reset_peak(device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01 if method == "full" else 0.0)
        real = 0
        t0 = None
        for step in range(steps + 1):  # the first step warms up and is not timed
            batch = train[step * rows_per_batch:(step + 1) * rows_per_batch]
            src = [tok.encode(PROMPT.format(dialogue=r["dialogue"])).ids for r in batch]
            tgt = [tok.encode(r["summary"]).ids for r in batch]
            if step > 0:
                real += sum(min(len(s), 512) + min(len(t), 512) for s, t in zip(src, tgt))
            x = torch.tensor([pad512(s) for s in src], device=device)
            # The lab pads labels with the pad id and trains on them.
            y = torch.tensor([pad512(t) for t in tgt], device=device)
            loss = model(input_ids=x, attention_mask=(x != 0).long(), labels=y).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step == 0:
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        settings = "lab settings" + (f", batch {rows_per_batch}" if rows_per_batch != 8 else "")
        figures.append({"what": f"train, {method} ({settings})", "per_s": steps * rows_per_batch / seconds, "tokens_per_s": real / seconds, "seconds": seconds, **peak_mb(device)})
        del model, opt

    model = T5ForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    dialogues = list(dict.fromkeys(r["dialogue"] for r in rows(f"{data}/test.csv")))[:n_gen]
    new = 0
    reset_peak(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for d in dialogues:
            ids = torch.tensor([tok.encode(PROMPT.format(dialogue=d)).ids[:512]], device=device)
            out = model.generate(ids, max_new_tokens=max_new, num_beams=1, do_sample=False)
            new += out.shape[1] - 1
    seconds = time.perf_counter() - t0
    figures.append({"what": "generate, one at a time (lab loop)", "per_s": len(dialogues) / seconds, "tokens_per_s": new / seconds, "seconds": seconds, **peak_mb(device)})

    if n_batched:
        dialogues = list(dict.fromkeys(r["dialogue"] for r in rows(f"{data}/test.csv")))[:n_batched]
        encoded = sorted((tok.encode(PROMPT.format(dialogue=d)).ids[:512] for d in dialogues), key=len, reverse=True)
        new = 0
        reset_peak(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(encoded), 64):
                batch = encoded[i:i + 64]
                width = max(map(len, batch))
                ids = torch.tensor([b + [0] * (width - len(b)) for b in batch], device=device)
                out = model.generate(ids, attention_mask=(ids != 0).long(), max_new_tokens=max_new, num_beams=1, do_sample=False)
                new += int((out[:, 1:] != 0).sum())
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        figures.append({"what": "generate, batched (transformers, 64 per batch)", "per_s": len(dialogues) / seconds, "tokens_per_s": new / seconds, "seconds": seconds, **peak_mb(device)})
    print(json.dumps({"device": device, "torch": torch.__version__, "figures": figures}))


if __name__ == "__main__":
    main()
