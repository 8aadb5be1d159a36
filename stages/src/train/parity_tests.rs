//! Training against PyTorch and PEFT on real DialogSum rows (fp32, CPU, tiny random-init
//! model): one full fine-tuning step equals torch.optim.AdamW's; a LoRA adapter trained here
//! loads in PEFT with the same logits; merging it gives the same greedy summaries; LoRA leaves
//! every base weight bit-identical.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::data::load::read_table;
use crate::data::tokenize::{tokenize, TokenTable, TokenizeParams};
use crate::generate::{open, GenerateParams};
use crate::make_model::{make_model, MakeModelParams};
use crate::runtime::RuntimeOptions;
use crate::stage::{InputRef, NoProgress, StageContext};
use crate::t5::decode::{generate, Strategy};
use crate::t5::{loader, weights};
use crate::torch::device::{DeviceChoice, DtypeChoice};
use crate::train::artifact::save;
use crate::train::batches::collate;
use crate::train::fit::fit;
use crate::train::model::build;
use crate::train::params::{Method, TrainParams};
use crate::train::shapes::Padding;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn python(args: &[&str]) {
    let python = root().join(".venv/bin/python");
    let status =
        Command::new(python).arg(root().join("python/train_reference.py")).args(args).status().expect("python runs");
    assert!(status.success());
}

/// A tiny model and 16 tokenized training rows of DialogSum.
fn setup(dir: &Path) -> (PathBuf, TokenTable) {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let data = root().join("../shared/data/dialogsum");
    let p = MakeModelParams {
        arch: "tiny".into(),
        tokenizer_data: data.display().to_string(),
        vocab_size: 2000,
        text_columns: vec!["dialogue".into(), "summary".into()],
        seed: 5,
    };
    make_model(&p, &model).unwrap();
    let table = read_table(&data.join("train.csv"), None).unwrap().take(&(0..16).collect::<Vec<_>>());
    let tp: TokenizeParams =
        serde_yaml::from_str(&format!("input: x\nmodel: {}\nmax_source_tokens: 128\n", model.display())).unwrap();
    let tok = crate::data::tokenizer::load(&model.join("tokenizer.json")).unwrap();
    let (tokens, _) = tokenize(&table, &tok, &tp, "train").unwrap();
    (model, tokens)
}

fn params(model: &Path, extra: &str) -> TrainParams {
    serde_yaml::from_str(&format!("train: t\nmodel: {}\ndevice: cpu\ndropout: 0.0\n{extra}", model.display())).unwrap()
}

fn batch_json(tokens: &TokenTable, rows: &[usize], path: &Path) -> (Tensor, Tensor, Tensor) {
    let (x, mask, y) = collate(tokens, rows, Padding::NONE.shape(tokens, rows), Device::Cpu);
    let list = |t: &Tensor| -> Vec<Vec<i64>> { Vec::<Vec<i64>>::try_from(t).unwrap() };
    std::fs::write(
        path,
        serde_json::json!({"input_ids": list(&x), "attention_mask": list(&mask), "labels": list(&y)}).to_string(),
    )
    .unwrap();
    (x, mask, y)
}

static RUNTIME: std::sync::LazyLock<RuntimeOptions> = std::sync::LazyLock::new(RuntimeOptions::default);

fn ctx(dir: &Path) -> StageContext<'static> {
    StageContext::new("test", Default::default(), dir.join("out"), dir.join("work"), &NoProgress, &RUNTIME)
}

#[test]
fn one_full_fine_tuning_step_matches_pytorch_adamw() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokens) = setup(dir.path());
    let rows: Vec<usize> = (0..4).collect();
    let batch = dir.path().join("batch.json");
    let (x, mask, y) = batch_json(&tokens, &rows, &batch);
    let (lr, wd, clip) = (1e-3, 0.01, 1.0);
    let out = dir.path().join("ref");
    python(&[
        "step",
        model.to_str().unwrap(),
        batch.to_str().unwrap(),
        out.to_str().unwrap(),
        &lr.to_string(),
        &wd.to_string(),
        &clip.to_string(),
    ]);
    let facts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(out.with_extension("safetensors")).unwrap().into_iter().collect();

    let mut p = params(&model, &format!("lr: {lr}\nweight_decay: {wd}\ngrad_clip: {clip}\n"));
    p.lr = Some(lr);
    let b = build(Method::Full, &model, &p, Device::Cpu, &RUNTIME).unwrap();
    let before =
        weights::variables(&b.base).into_iter().map(|(k, v)| (k, v.detach().copy())).collect::<HashMap<_, _>>();
    let mut opt =
        crate::train::optim::AdamW::new(weights::variables(&b.base), wd, Kind::Float, crate::train::optim::Part::WHOLE);
    let loss = b.model.loss(&x, &mask, &y, true);
    assert!((loss.double_value(&[]) - facts["loss"].as_f64().unwrap()).abs() < 1e-5, "loss");
    loss.backward();
    let norm = opt.clip_grad_norm(clip).double_value(&[]);
    let want_norm = facts["grad_norm"].as_f64().unwrap();
    assert!((norm - want_norm).abs() / want_norm < 1e-4, "grad norm {norm} vs {want_norm}");
    opt.update(lr, &loss);
    // Compare the updates themselves: ‖Δours − Δtorch‖ / ‖Δtorch‖ per tensor.
    let mut worst = 0.0f64;
    for (name, w) in weights::variables(&b.base) {
        let r = &reference[&name];
        let d_ours = w.detach() - &before[&name];
        let d_ref = r - &before[&name];
        let rel = (&d_ours - &d_ref).norm().double_value(&[]) / d_ref.norm().double_value(&[]).max(1e-12);
        worst = worst.max(rel);
    }
    eprintln!(
        "one step: loss {:.6}, grad norm {norm:.4}, worst relative update difference {worst:.2e}",
        loss.double_value(&[])
    );
    assert!(worst < 1e-3, "updates differ: {worst}");
}

#[test]
fn lora_adapter_loads_in_peft_with_the_same_logits_and_merges_to_the_same_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokens) = setup(dir.path());
    let p = {
        let mut p =
            params(&model, "max_steps: 5\nlr: 0.01\nlora: {r: 4, alpha: 8, dropout: 0.0}\ncheckpoint_every: 0\n");
        p.lr = Some(0.01);
        p.weight_decay = Some(0.0);
        p
    };
    let b = build(Method::Lora, &model, &p, Device::Cpu, &RUNTIME).unwrap();
    let base_before: Vec<(String, Tensor)> =
        weights::variables(&b.base).into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
    let progress = fit(&b, &tokens, None, &p, &dir.path().join("work"), &ctx(dir.path())).unwrap();
    assert_eq!(progress.step, 5);
    for (name, w) in weights::variables(&b.base) {
        let old = &base_before.iter().find(|(k, _)| *k == name).unwrap().1;
        assert!(w.equal(old), "LoRA changed base weight {name}");
    }
    let adapter = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    save(&b, &p, &adapter).unwrap();

    // PEFT: same logits.
    let batch = dir.path().join("batch.json");
    let (x, mask, y) = batch_json(&tokens, &[0, 1, 2], &batch);
    let out = dir.path().join("peft");
    python(&[
        "peft",
        model.to_str().unwrap(),
        adapter.to_str().unwrap(),
        batch.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let reference = &Tensor::read_safetensors(out.with_extension("safetensors")).unwrap()[0].1;
    let mut m = loader::load(&model, Device::Cpu, Kind::Float).unwrap();
    crate::adapter::apply_to(&mut m, &adapter).unwrap();
    let logits = tch::no_grad(|| {
        m.model.decode(&m.model.shift_right(&y), &m.model.encode(&x, &mask, false), &mask, None, false)
    });
    let diff = (&logits - reference).abs().max().double_value(&[]);
    eprintln!("PEFT logits: max |Δ| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
    // The adapter changed something.
    let base = loader::load(&model, Device::Cpu, Kind::Float).unwrap();
    let plain = tch::no_grad(|| {
        base.model.decode(&base.model.shift_right(&y), &base.model.encode(&x, &mask, false), &mask, None, false)
    });
    assert!((&logits - plain).abs().max().double_value(&[]) > 1e-3);

    // Merged: same greedy summaries as base + adapter.
    let merged = dir.path().join("merged");
    crate::adapter::merge(&adapter, &model, &merged).unwrap();
    let mm = loader::load(&merged, Device::Cpu, Kind::Float).unwrap();
    let a = generate(&m.model, &x, &mask, 20, &Strategy::Greedy);
    let c = generate(&mm.model, &x, &mask, 20, &Strategy::Greedy);
    assert_eq!(a, c);
    // The `generate` stage's way: the adapter folded into the weights on loading.
    let mut g = GenerateParams::new(InputRef::parse("t").unwrap(), model.display().to_string());
    (g.device, g.dtype) = (DeviceChoice::Cpu, DtypeChoice::Fp32);
    let folded = open(&model, Some(&adapter), &g, &RUNTIME, None).unwrap();
    assert!(folded.adapters.is_none());
    assert_eq!(generate(&folded.model, &x, &mask, 20, &Strategy::Greedy), a);
}

/// Rank-stabilized LoRA (`rslora`, PEFT's `use_rslora`: alpha / √r) trains, saves and loads as
/// PEFT reads it; and an adapter config asking for what sumflow does not apply is refused by
/// name instead of being applied as a plain adapter.
#[test]
fn rslora_matches_peft_and_unsupported_adapter_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokens) = setup(dir.path());
    let mut p = params(
        &model,
        "max_steps: 3\nlr: 0.01\nlora: {r: 4, alpha: 8, dropout: 0.0, rslora: true}\ncheckpoint_every: 0\n",
    );
    (p.lr, p.weight_decay) = (Some(0.01), Some(0.0));
    let b = build(Method::Lora, &model, &p, Device::Cpu, &RUNTIME).unwrap();
    fit(&b, &tokens, None, &p, &dir.path().join("work"), &ctx(dir.path())).unwrap();
    let adapter = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    save(&b, &p, &adapter).unwrap();
    let config_path = adapter.join("adapter_config.json");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(config["use_rslora"], true);

    let batch = dir.path().join("batch.json");
    let (x, mask, y) = batch_json(&tokens, &[0, 1, 2], &batch);
    let out = dir.path().join("peft");
    python(&[
        "peft",
        model.to_str().unwrap(),
        adapter.to_str().unwrap(),
        batch.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let reference = &Tensor::read_safetensors(out.with_extension("safetensors")).unwrap()[0].1;
    let logits = |adapter: &Path| {
        let mut m = loader::load(&model, Device::Cpu, Kind::Float).unwrap();
        crate::adapter::apply_to(&mut m, adapter).unwrap();
        tch::no_grad(|| m.model.decode(&m.model.shift_right(&y), &m.model.encode(&x, &mask, false), &mask, None, false))
    };
    let diff = (logits(&adapter) - reference).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "rslora: {diff} from PEFT");

    // The same weights read as a plain adapter (alpha / r) compute something else.
    let edit = |name: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let copy = dir.path().join(name);
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::copy(adapter.join("adapter_model.safetensors"), copy.join("adapter_model.safetensors")).unwrap();
        let mut c = config.clone();
        change(&mut c);
        std::fs::write(copy.join("adapter_config.json"), c.to_string()).unwrap();
        copy
    };
    let plain = edit("plain", &|c| c["use_rslora"] = false.into());
    assert!((logits(&plain) - reference).abs().max().double_value(&[]) > 1e-3);

    let refused = |name: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let copy = edit(name, change);
        let mut m = loader::load(&model, Device::Cpu, Kind::Float).unwrap();
        let e = crate::adapter::apply_to(&mut m, &copy).expect_err("refused");
        e.to_string().replace(&copy.display().to_string(), "ADAPTER")
    };
    assert_eq!(
        refused("dora", &|c| c["use_dora"] = true.into()),
        "ADAPTER/adapter_config.json: `use_dora` asks for DoRA, which sumflow does not apply"
    );
    assert_eq!(
        refused("fan", &|c| c["fan_in_fan_out"] = true.into()),
        "ADAPTER/adapter_config.json: `fan_in_fan_out` asks for transposed (Conv1D) weights, which sumflow does not apply"
    );
    assert_eq!(
        refused("none", &|c| c["target_modules"] = serde_json::json!([])),
        "ADAPTER/adapter_config.json: `target_modules` name at least one of q, k, v, o"
    );
    assert_eq!(
        refused("wi", &|c| c["target_modules"] = serde_json::json!(["wi"])),
        "ADAPTER/adapter_config.json: `target_modules` `wi` is not an attention projection (q, k, v, o)"
    );
    assert_eq!(
        refused("regex", &|c| c["target_modules"] = ".*q$".into()),
        "ADAPTER/adapter_config.json: target_modules `.*q$` is a regular expression: list the projections (q, k, v, o)"
    );
    // Config and weights that disagree: the weights hold `v`'s adapters too.
    let only_q = refused("q-only", &|c| c["target_modules"] = serde_json::json!(["q"]));
    assert!(only_q.starts_with("ADAPTER/adapter_model.safetensors: holds `base_model.model."), "{only_q}");
    assert!(only_q.ends_with(".v.lora_A.weight`, which the config's targets (q) do not make"), "{only_q}");
}
