//! FLAN-T5 in tch against Python transformers (fp32, CPU) on real DialogSum text: tokenizer ids,
//! encoder output and logits within 1e-4, the loss, and greedy generations token for token —
//! on a random-init tiny model and a flan-t5-small-shape one written by `make-model`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::data::load::read_table;
use crate::make_model::{make_model, MakeModelParams};
use crate::t5::decode::{generate, Strategy};
use crate::t5::loader;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

const PROMPT: &str = "Summarize the following conversation.\n\n{dialogue}\n\nSummary: ";

/// The first `n` distinct dialogues of DialogSum's test split with their first summary.
fn examples(n: usize) -> (Vec<String>, Vec<String>) {
    let table = read_table(&root().join("../shared/data/dialogsum/test.csv"), None).unwrap();
    let d = table.column("dialogue", "test").unwrap();
    let s = table.column("summary", "test").unwrap();
    (0..n).map(|i| (PROMPT.replace("{dialogue}", &d[3 * i]), s[3 * i].clone())).unzip()
}

fn check(arch: &str, n: usize, max_new: i64) {
    let dir = tempfile::tempdir().unwrap();
    let params = MakeModelParams {
        arch: arch.into(),
        tokenizer_data: root().join("../shared/data/dialogsum").display().to_string(),
        vocab_size: 4000,
        text_columns: vec!["dialogue".into(), "summary".into()],
        seed: 7,
    };
    make_model(&params, dir.path()).unwrap();
    let (sources, targets) = examples(n);
    let input = dir.path().join("inputs.json");
    std::fs::write(&input, serde_json::json!({"sources": sources, "targets": targets}).to_string()).unwrap();
    let out = dir.path().join("ref");
    let status = Command::new(python())
        .arg(root().join("python/t5_reference.py"))
        .args([dir.path(), &input, &out])
        .arg(max_new.to_string())
        .status()
        .expect("python runs");
    assert!(status.success());
    let facts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(out.with_extension("safetensors")).unwrap().into_iter().collect();

    let m = loader::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(facts["lm_head_is_shared"], false, "transformers kept FLAN-T5's separate lm_head");
    let ours: i64 = m.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert_eq!(facts["num_parameters"].as_i64().unwrap(), ours, "parameter count");

    let ids =
        |v: &serde_json::Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    let mut worst = (0.0f64, 0.0f64);
    // Random-init logits are large (std-1 embeddings and head): differences are judged against
    // their scale as well as absolutely.
    let mut scale = 0.0f64;
    for i in 0..n {
        let src: Vec<i64> = m
            .tokenizer
            .encode(sources[i].as_str(), true)
            .unwrap()
            .get_ids()
            .iter()
            .take(512)
            .map(|&x| x as i64)
            .collect();
        let tgt: Vec<i64> =
            m.tokenizer.encode(targets[i].as_str(), true).unwrap().get_ids().iter().map(|&x| x as i64).collect();
        assert_eq!(src, ids(&facts["source_ids"][i]), "tokenizer ids of source {i}");
        assert_eq!(tgt, ids(&facts["target_ids"][i]), "tokenizer ids of target {i}");
        let x = Tensor::from_slice(&src).unsqueeze(0);
        let mask = x.ones_like();
        let y = Tensor::from_slice(&tgt).unsqueeze(0);
        tch::no_grad(|| {
            let enc = m.model.encode(&x, &mask, false);
            let logits = m.model.decode(&m.model.shift_right(&y), &enc, &mask, None, false);
            let de = (enc.squeeze_dim(0) - &reference[&format!("enc_{i}")]).abs().max().double_value(&[]);
            let want = &reference[&format!("logits_{i}")];
            let dl = (logits.squeeze_dim(0) - want).abs().max().double_value(&[]);
            worst = (worst.0.max(de), worst.1.max(dl));
            scale = scale.max(want.abs().max().double_value(&[]));
            let loss = m.model.loss(&x, &mask, &y, false).double_value(&[]);
            let want = reference[&format!("loss_{i}")].double_value(&[0]);
            assert!((loss - want).abs() < 1e-4, "loss {loss} vs {want}");
        });
        let gen = generate(&m.model, &x, &mask, max_new, &Strategy::Greedy);
        assert_eq!(gen[0], ids(&facts["generations"][i]), "greedy generation of example {i}");
    }
    eprintln!(
        "{arch}: max |Δ| encoder {:.2e}, logits {:.2e} (max |logit| {scale:.1}) over {n} dialogues",
        worst.0, worst.1
    );
    assert!(worst.0 < 1e-4, "encoder {worst:?}");
    // Absolute 1e-4, or 2e-6 of the logits' scale (fp32 rounding on logits in the hundreds).
    assert!(worst.1 < 1e-4_f64.max(2e-6 * scale), "logits {worst:?} at scale {scale}");

    // Batched (padded) greedy decoding gives the same tokens as one at a time.
    let rows: Vec<Vec<i64>> = (0..n).map(|i| ids(&facts["source_ids"][i])).collect();
    let width = rows.iter().map(Vec::len).max().unwrap();
    let padded: Vec<i64> =
        rows.iter().flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0, width - r.len()))).collect();
    let mask: Vec<i64> = rows
        .iter()
        .flat_map(|r| std::iter::repeat_n(1, r.len()).chain(std::iter::repeat_n(0, width - r.len())))
        .collect();
    let x = Tensor::from_slice(&padded).view([n as i64, width as i64]);
    let batched =
        generate(&m.model, &x, &Tensor::from_slice(&mask).view([n as i64, width as i64]), max_new, &Strategy::Greedy);
    for (i, g) in batched.iter().enumerate() {
        assert_eq!(*g, ids(&facts["generations"][i]), "batched generation of example {i}");
    }
}

#[test]
fn tiny_model_matches_transformers() {
    check("tiny", 20, 30);
}

#[test]
fn flan_t5_small_shape_matches_transformers() {
    check("flan-t5-small", 20, 10);
}
