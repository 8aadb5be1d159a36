"""PyTorch / PEFT references for sumflow's training.

step MODEL_DIR BATCH_JSON OUT LR WD CLIP
    One training step as transformers + torch.optim.AdamW take it (dropout off): writes
    OUT.safetensors with the updated weights and OUT.json with the loss and gradient norm.
peft MODEL_DIR ADAPTER_DIR BATCH_JSON OUT
    Logits of base + adapter loaded by PEFT (eval mode): OUT.safetensors (`logits`).
BATCH_JSON: {"input_ids": [[...]], "attention_mask": [[...]], "labels": [[... -100 ...]]}.
"""
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import T5ForConditionalGeneration


def load(model_dir):
    model = T5ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):  # T5Attention keeps its rate as a float
            m.dropout = 0.0
    return model


def tensors(batch_json):
    b = json.load(open(batch_json))
    return {k: torch.tensor(v) for k, v in b.items()}


def step(model_dir, batch_json, out, lr, wd, clip):
    torch.set_num_threads(2)
    model = load(model_dir)
    model.train()
    b = tensors(batch_json)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    loss = model(**b).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights.pop("encoder.embed_tokens.weight", None)
    weights.pop("decoder.embed_tokens.weight", None)
    save_file(weights, f"{out}.safetensors")
    json.dump({"loss": loss.item(), "grad_norm": norm.item()}, open(f"{out}.json", "w"))


def peft_logits(model_dir, adapter_dir, batch_json, out):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load(model_dir), adapter_dir).eval()
    b = tensors(batch_json)
    with torch.no_grad():
        logits = model(**b).logits
    save_file({"logits": logits.contiguous()}, f"{out}.safetensors")


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "step":
        step(args[0], args[1], args[2], float(args[3]), float(args[4]), float(args[5]))
    else:
        peft_logits(*args)
