"""Reference T5 outputs from Python transformers + tokenizers for a model folder.

Reads {"sources": [...], "targets": [...]} from INPUT_JSON. Writes OUT.safetensors with, per
example i, `enc_i` (encoder output) and `logits_i` (teacher-forced on the target), and OUT.json
with the token ids both tokenizers produce, greedy generations, and facts about the model.

usage: t5_reference.py MODEL_DIR INPUT_JSON OUT MAX_NEW_TOKENS
"""
import json
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration


def main():
    model_dir, inputs, out, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(2)
    data = json.load(open(inputs))
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    model = T5ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    src_ids = [tok.encode(s).ids[:512] for s in data["sources"]]
    tgt_ids = [tok.encode(t).ids for t in data["targets"]]
    tensors, generations = {}, []
    with torch.no_grad():
        for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
            x, y = torch.tensor([s]), torch.tensor([t])
            o = model(input_ids=x, labels=y)
            tensors[f"enc_{i}"] = o.encoder_last_hidden_state[0].contiguous()
            tensors[f"logits_{i}"] = o.logits[0].contiguous()
            tensors[f"loss_{i}"] = o.loss.reshape(1)
            g = model.generate(x, max_new_tokens=max_new, do_sample=False, num_beams=1)
            generations.append(g[0].tolist()[1:])  # without the decoder start token
    save_file(tensors, f"{out}.safetensors")
    facts = {
        "source_ids": src_ids,
        "target_ids": tgt_ids,
        "generations": generations,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "lm_head_is_shared": model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr(),
    }
    json.dump(facts, open(f"{out}.json", "w"))


if __name__ == "__main__":
    main()
