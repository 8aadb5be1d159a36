//! The model commands and stages through the binary (built with the `torch` feature): a tiny
//! random-init model made once per test run, `generate` over DialogSum's whole test split,
//! `summarize`, `params`, and the refusals (pickled weights, fp16, the hub offline).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::{shared, Sandbox};

/// A tiny model (tokenizer of 2,000 pieces trained on DialogSum's train split), made once.
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let s = tempfile::tempdir().unwrap();
            let out = s.path().join("tiny");
            let sandbox = Sandbox::new();
            let data = shared("dialogsum");
            sandbox.ok(&[
                "make-model",
                "--arch",
                "tiny",
                "--tokenizer-data",
                data.to_str().unwrap(),
                "--vocab-size",
                "2000",
                "--seed",
                "3",
                "--out",
                out.to_str().unwrap(),
            ]);
            (s, out)
        })
        .1
}

#[test]
fn make_model_writes_a_hugging_face_layout() {
    let dir = tiny_model();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "tokenizer_config.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 32128, "the model keeps T5's vocabulary size");
    assert_eq!(config["tie_word_embeddings"], false);
    assert_eq!(config["feed_forward_proj"], "gated-gelu");
}

#[test]
fn params_counts_like_the_lab() {
    let s = Sandbox::new();
    let out = s.ok(&["params", "--model", "flan-t5-base"]);
    assert!(out.stdout.contains("trainable model parameters: 247577856\nall model parameters: 247577856\npercentage of trainable model parameters: 100.00%"), "{}", out.stdout);
    let lora = s.ok(&["params", "--model", "flan-t5-base", "--lora", "r=32,alpha=32,targets=q,v"]);
    assert!(lora.stdout.contains("trainable model parameters: 3538944\nall model parameters: 251116800\npercentage of trainable model parameters: 1.41%"), "{}", lora.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["params", "--model", tiny_model().to_str().unwrap(), "--format", "json"]).stdout)
            .unwrap();
    assert_eq!(json["trainable"], json["total"]);
}

#[test]
fn generate_covers_the_test_split_once_per_dialogue_and_reruns_from_cache() {
    let s = Sandbox::new();
    s.write(
        "p.yaml",
        format!(
            "name: gen\nstages:\n  data: {{kind: load, path: {}}}\n  tokens: {{kind: tokenize, input: data.test, model: {m}}}\n  original: {{kind: generate, input: data.test, model: {m}, device: cpu, max_new_tokens: 20}}\n",
            shared("dialogsum").display(),
            m = tiny_model().display()
        ),
    );
    let first = s.ok(&["run", "p.yaml"]);
    assert!(first.stdout.contains("original: 1500 predictions"), "{}", first.stdout);
    assert!(first.stdout.contains("tokens: 1500 rows"), "{}", first.stdout);
    let audit = s.ok(&["audit", "latest"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(audit.stdout.split(':').next().unwrap()).unwrap()).unwrap();
    let stats = &manifest["stages"][2]["stats"];
    assert_eq!(stats["rows"], 1500.0);
    assert_eq!(stats["dialogues"], 500.0, "DialogSum's 1,500 test rows hold 500 dialogues");
    assert!(stats["dialogues_per_s"].as_f64().unwrap() > 0.0);
    let second = s.ok(&["run", "p.yaml"]);
    assert!(second.stderr.contains("3 cached, 0 to run"), "{}", second.stderr);
}

#[test]
fn summarize_a_text_and_a_file_alike() {
    let s = Sandbox::new();
    let m = tiny_model().to_str().unwrap();
    let dialogue = "#Person1#: Hi, how are you? #Person2#: Fine, thanks.";
    let text = s.ok(&["summarize", "--model", m, "--max-new-tokens", "8", "--device", "cpu", dialogue]).stdout;
    s.write("d.csv", format!("id,dialogue\na,\"{dialogue}\"\nb,#Person2#: Bye.\n"));
    s.ok(&[
        "summarize",
        "--model",
        m,
        "--input",
        "d.csv",
        "--output",
        "out.csv",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
    ]);
    let mut rows = csv::Reader::from_path(s.path().join("out.csv")).unwrap();
    assert_eq!(rows.headers().unwrap().iter().collect::<Vec<_>>(), ["id", "dialogue", "prediction"]);
    let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(format!("{}\n", &rows[0][2]), text, "the same summary either way");
    // Beam search runs too.
    s.ok(&["summarize", "--model", m, "--max-new-tokens", "5", "--num-beams", "3", "--device", "cpu", dialogue]);
}

#[test]
fn pickled_weights_are_refused() {
    let s = Sandbox::new();
    let dir = s.path().join("pickled");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny_model().join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(tiny_model().join("model.safetensors"), dir.join("pytorch_model.bin")).unwrap();
    let out = s.run(&["summarize", "--model", dir.to_str().unwrap(), "hello"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("has only pickled weights (pytorch_model.bin)"), "{}", out.stderr);
}

#[test]
fn bad_generate_params_are_refused_before_anything_runs() {
    for (params, says) in [
        ("dtype: fp16", "stages.g.dtype: fp16 overflows to NaN in T5"),
        ("cuda_graphs: true, decoding: {strategy: beam, num_beams: 2}", "stages.g.cuda_graphs: is for greedy decoding"),
    ] {
        let s = Sandbox::new();
        let data = shared("dialogsum");
        s.write("p.yaml", format!("name: t\nstages:\n  d: {{kind: load, path: {}}}\n  g: {{kind: generate, input: d.test, model: x, {params}}}\n", data.display()));
        let out = s.run(&["validate", "p.yaml"]);
        assert_eq!(out.code, 1, "{params}");
        assert!(out.stderr.contains(says), "{params}: {}", out.stderr);
    }
}

#[test]
fn the_hub_offline_fails_fast_naming_the_offline_form() {
    let s = Sandbox::new();
    let t0 = std::time::Instant::now();
    // An endpoint nothing listens on: offline even where the hub would be reachable.
    let out = s
        .cmd(&["summarize", "--model", "hf://google/flan-t5-base", "hello"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("cannot fetch it from the Hugging Face hub") && stderr.contains("--set model=DIR"),
        "{stderr}"
    );
    assert!(t0.elapsed().as_secs() < 30);
}

#[test]
fn bench_measures_training_generation_and_scoring() {
    let s = Sandbox::new();
    let json = s.path().join("bench.json");
    let m = tiny_model().to_str().unwrap();
    let data = shared("dialogsum");
    let results = shared("lab-results/dialogue-summary-training-results.csv");
    // 3 training steps of 2,048-token batches on the CPU, and `more`.
    let bench = |more: &[&str]| {
        let mut args = vec!["bench", "--model", m, "--device", "cpu", "--data", data.to_str().unwrap()];
        args.extend(["--results", results.to_str().unwrap(), "--train-steps", "3", "--batch-tokens", "2048"]);
        args.extend(more);
        s.ok(&args)
    };
    let out = bench(&[
        "--generate",
        "6",
        "--generate-one-at-a-time",
        "2",
        "--max-new-tokens",
        "5",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.stdout.contains("train, full fine-tuning (2 steps after 1 warm-up; ")
            && out.stdout.contains("score, ROUGE (4500 pairs)"),
        "{}",
        out.stdout
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let figures = report["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 5);
    assert!(figures.iter().all(|f| f["per_s"].as_f64().unwrap() > 0.0));
    assert!(figures[0]["tflops"].as_f64().unwrap() > 0.0 && figures[0]["epoch_s"].as_f64().unwrap() > 0.0);
    // Length-bucketed batches pad a little: between none and a fifth more tokens than real ones.
    let computed = figures[0]["computed_per_real"].as_f64().unwrap();
    assert!((1.0..1.2).contains(&computed), "{computed}");
    // Packed: rows as wide as the longest dialogue (512 tokens), yet full: about as few tokens
    // computed per real one as length-bucketed batches (rows of 512 padded would be ~3).
    let packed_json = s.path().join("packed.json");
    let packed =
        bench(&["--generate", "0", "--generate-one-at-a-time", "0", "--pack", "--json", packed_json.to_str().unwrap()]);
    assert!(packed.stdout.contains("train, full fine-tuning, packed (2 steps after 1 warm-up; "), "{}", packed.stdout);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(packed_json).unwrap()).unwrap();
    let packed_computed = report["figures"][0]["computed_per_real"].as_f64().unwrap();
    assert!((1.0..1.15).contains(&packed_computed), "packed {packed_computed} (unpacked {computed})");
    // A bad choice is refused before anything runs; one step would leave nothing timed.
    let fp16 = s.run(&["bench", "--model", m, "--device", "cpu", "--dtype", "fp16"]);
    assert_ne!(fp16.code, 0);
    assert_eq!(fp16.stderr, "error: --dtype: `fp16`: use auto, fp32 or bf16\n");
    let one = s.run(&["bench", "--model", m, "--device", "cpu", "--train-steps", "1"]);
    assert_ne!(one.code, 0);
    assert_eq!(one.stderr, "error: --train-steps: at least 2 (the first warms up and is not timed)\n");
}

/// A copy of the tiny model in `dir`, and the blake3 of each of its files.
fn model_copy(dir: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(tiny_model()).unwrap() {
        let from = entry.unwrap().path();
        let to = dir.join(from.file_name().unwrap());
        std::fs::copy(&from, &to).unwrap();
        files.push((to.display().to_string(), blake3::hash(&std::fs::read(&to).unwrap()).to_hex().to_string()));
    }
    files.sort();
    files
}

fn hashes(files: &[(String, String)]) -> Vec<(String, String)> {
    files.iter().map(|(f, _)| (f.clone(), blake3::hash(&std::fs::read(f).unwrap()).to_hex().to_string())).collect()
}

/// Item 1: `merge` never writes over its base or its adapter (however the folder is spelled),
/// nor into an existing folder, and writes a new folder whole or not at all.
#[test]
fn merge_never_overwrites_its_inputs() {
    let s = Sandbox::new();
    let base = s.path().join("M");
    let before = model_copy(&base);
    s.write(
        "p.yaml",
        format!(
            "name: a\nstages:\n  data: {{kind: load, path: {}}}\n  tok: {{kind: tokenize, input: data.validation, model: M}}\n  lora: {{kind: train-lora, train: tok, model: M, device: cpu, max_steps: 1, batch_tokens: 2048}}\n",
            shared("dialogsum").display()
        ),
    );
    s.ok(&["run", "p.yaml"]);
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.ok(&["audit", "latest"]).stdout.split(':').next().unwrap()).unwrap(),
    )
    .unwrap();
    let digest = m["stages"][2]["outputs"]["adapter"]["digest"].as_str().unwrap();
    let adapter = s.path().join("A");
    std::fs::create_dir(&adapter).unwrap();
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(s.cache().join("artifacts").join(digest).join(f), adapter.join(f)).unwrap();
    }
    let abs = base.display().to_string();
    for (out, is) in
        [("M", "--base"), ("./M", "--base"), (abs.as_str(), "--base"), ("M/merged", "--base"), ("A/x", "ADAPTER")]
    {
        let run = s.run(&["merge", "A", "--base", "M", "--out", out]);
        assert_eq!(run.code, 1, "--out {out}");
        let dir = if is == "ADAPTER" { "A" } else { "M" };
        assert_eq!(
            run.stderr,
            format!("error: --out: {out} is {is} or inside it ({dir}): merge writes a new folder\n"),
            "--out {out}"
        );
    }
    assert_eq!(hashes(&before), before, "the base model is untouched");
    std::fs::create_dir(s.path().join("taken")).unwrap();
    std::fs::write(s.path().join("taken/keep.txt"), "mine").unwrap();
    let taken = s.run(&["merge", "A", "--base", "M", "--out", "taken"]);
    assert_eq!(taken.stderr, "error: --out: taken exists; choose a new folder\n");
    s.ok(&["merge", "A", "--base", "M", "--out", "merged"]);
    let merged: Vec<String> = std::fs::read_dir(s.path().join("merged"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        merged.contains(&"model.safetensors".to_string()) && merged.contains(&"config.json".to_string()),
        "{merged:?}"
    );
    assert_eq!(
        std::fs::read_dir(s.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .count(),
        0
    );
}

/// Item 11: `summarize` checks its flags as the `generate` stage checks its params, writes the
/// format its output's extension names, as a new file, with a `prediction` column beside the
/// input's columns — which sumflow's own `load` reads back.
#[test]
fn summarize_flags_and_outputs_are_those_of_the_stage() {
    let s = Sandbox::new();
    let m = tiny_model().to_str().unwrap();
    let test = shared("dialogsum/test.csv");
    let test = test.to_str().unwrap();
    for (flag, says) in [
        ("--max-new-tokens=0", "error: --max-new-tokens: must be between 1 and 4096\n"),
        ("--num-beams=0", "error: --num-beams: must be at least 1\n"),
    ] {
        let out = s.run(&["summarize", "--model", m, "--device", "cpu", flag, "hello"]);
        assert_eq!((out.code, out.stderr.as_str()), (1, says), "{flag}");
    }
    s.write("few.csv", "id,dialogue,summary\na,#Person1#: Hi.,A greeting.\nb,#Person2#: Bye.,A farewell.\n");
    for name in ["out.parquet", "out.jsonl", "out.csv"] {
        s.ok(&[
            "summarize",
            "--model",
            m,
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
            "--input",
            "few.csv",
            "--output",
            name,
        ]);
        // (A random model may well say nothing.)
        let require = "require: [id, dialogue, summary, prediction], allow_empty: [prediction]";
        s.write("p.yaml", format!("name: t\nstages:\n  back: {{kind: load, path: {name}, {require}}}\n"));
        let back = s.ok(&["run", "p.yaml"]);
        assert!(back.stdout.contains("back: all: 2 rows"), "{name}: {}", back.stdout);
    }
    let again = s.run(&["summarize", "--model", m, "--input", "few.csv", "--output", "out.csv"]);
    assert_eq!(again.stderr, "error: --output: out.csv exists; choose a new file\n");
    let odd = s.run(&["summarize", "--model", m, "--input", test, "--output", "out.txt"]);
    assert_eq!(odd.stderr, "error: --output: out.txt: name a .csv, .jsonl or .parquet file\n");
}

/// Items 6, 8 and 9: a model folder that is not what it claims — a config out of range or of
/// another kind, a tokenizer with no vocabulary or more pieces than embeddings, weights that
/// are not numbers — is refused with the file and the reason, never a crash; so are a `top_k`
/// beyond the vocabulary and an absurd `make-model` vocabulary.
#[test]
fn broken_model_folders_are_refused_naming_the_file() {
    let s = Sandbox::new();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_model().join("config.json")).unwrap()).unwrap();
    type Breaking = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Breaking, String)> = vec![
        (
            "layers",
            Box::new(|d: &Path| set(d, "num_layers", 0.into())),
            "`num_layers` is 0; it must be between 1 and 128".into(),
        ),
        (
            "decoder",
            Box::new(|d: &Path| set(d, "num_decoder_layers", 0.into())),
            "`num_decoder_layers` is 0; it must be between 1 and 128".into(),
        ),
        (
            "width",
            Box::new(|d: &Path| set(d, "d_model", (-5).into())),
            "`d_model` is -5; it must be between 1 and 16384".into(),
        ),
        (
            "start",
            Box::new(|d: &Path| set(d, "decoder_start_token_id", 999_999.into())),
            "`decoder_start_token_id` is 999999; it must be between 0 and 32127".into(),
        ),
        (
            "ffn",
            Box::new(|d: &Path| set(d, "feed_forward_proj", "banana".into())),
            "`feed_forward_proj` is `banana`: this T5 has `relu` or `gated-gelu`".into(),
        ),
        (
            "vocab",
            Box::new(|d: &Path| set(d, "vocab_size", 100.into())),
            "`lm_head.weight` has shape [32128, 64], the model expects [100, 64]".into(),
        ),
        (
            "empty",
            Box::new(|d: &Path| {
                std::fs::write(d.join("tokenizer.json"), r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{},"merges":[]}}"#).unwrap()
            }),
            "the tokenizer has no vocabulary".into(),
        ),
    ];
    fn set(d: &Path, key: &str, value: serde_json::Value) {
        let path = d.join("config.json");
        let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        c[key] = value;
        std::fs::write(path, c.to_string()).unwrap();
    }
    assert_eq!(config["num_layers"], 2);
    for (name, break_it, says) in cases {
        let dir = s.path().join(name);
        model_copy(&dir);
        break_it(&dir);
        let out = s.run(&["summarize", "--model", dir.to_str().unwrap(), "--device", "cpu", "hello"]);
        assert_eq!(out.code, 1, "{name}: {}", out.stderr);
        assert!(out.stderr.starts_with("error: ") && out.stderr.contains(&says), "{name}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
    }
    // Weights that are not numbers.
    let nan = s.path().join("nan");
    model_copy(&nan);
    let path = nan.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for b in &mut bytes[8 + header..8 + header + 4096] {
        *b = 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    let out = s.run(&["summarize", "--model", nan.to_str().unwrap(), "--device", "cpu", "hello"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("holds values that are not finite (NaN or infinity)"), "{}", out.stderr);
    // A top_k beyond the vocabulary; a vocabulary beyond the model.
    s.write(
        "p.yaml",
        format!(
            "name: t\nstages:\n  d: {{kind: load, path: {}}}\n  g: {{kind: generate, input: d.validation, model: {}, device: cpu, max_new_tokens: 2, decoding: {{strategy: sample, top_k: 100000000}}}}\n",
            shared("dialogsum").display(),
            tiny_model().display()
        ),
    );
    let out = s.run(&["run", "p.yaml"]);
    assert!(
        out.stderr.contains("        error: decoding.top_k: 100000000 is more than the model's 32128 tokens\n"),
        "{}",
        out.stderr
    );
    let out = s.run(&[
        "make-model",
        "--arch",
        "tiny",
        "--tokenizer-data",
        "x.csv",
        "--vocab-size",
        "1000000000",
        "--out",
        "big",
    ]);
    assert_eq!(out.stderr, "error: --vocab-size: must be between 200 and 32000\n");
}
