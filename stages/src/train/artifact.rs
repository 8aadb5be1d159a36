//! What a training stage writes: the trained weights — a full model folder (fp32 safetensors,
//! the base's configs and tokenizer) or a PEFT adapter folder — and `training/`, the record of
//! the run (parameter report, loss curve, throughput, validation losses).

use std::path::Path;

use super::checkpoints::Progress;
use super::model::Built;
use super::params::TrainParams;
use crate::adapter;
use crate::error::StageError;
use crate::t5::{loader, weights};

/// Writes the training record into `dir/training/`: parameter report, loss curve, throughput,
/// validation losses.
pub fn write_record(dir: &Path, b: &Built, progress: &Progress) -> Result<(), StageError> {
    let d = dir.join("training");
    std::fs::create_dir_all(&d).map_err(|e| StageError::io(&d, e))?;
    let (trainable, total) = b.parameter_report();
    let report = serde_json::json!({
        "trainable_parameters": trainable,
        "all_parameters": total,
        "percent_trainable": 100.0 * trainable as f64 / total as f64,
        "steps": progress.step,
    });
    let write =
        |name: &str, text: String| std::fs::write(d.join(name), text).map_err(|e| StageError::io(&d.join(name), e));
    write("parameters.json", serde_json::to_string_pretty(&report).expect("report serializes"))?;
    // The loss curve is deterministic on the CPU; throughput (a timing) goes apart.
    let mut losses = String::from("step,loss,lr\n");
    let mut throughput = String::from("step,tokens_per_s\n");
    for (s, l, lr, tps) in &progress.losses {
        losses.push_str(&format!("{s},{l},{lr}\n"));
        throughput.push_str(&format!("{s},{tps}\n"));
    }
    write("losses.csv", losses)?;
    write("throughput.csv", throughput)?;
    let mut val = String::from("step,validation_loss\n");
    for (s, l) in &progress.validation {
        val.push_str(&format!("{s},{l}\n"));
    }
    write("validation.csv", val)
}

/// Writes the trained weights: a full model folder (fp32 safetensors, the base's configs and
/// tokenizer), or a PEFT adapter folder (`adapter_model.safetensors`, `adapter_config.json`).
pub fn save(built: &Built, p: &TrainParams, out: &Path) -> Result<(), StageError> {
    match &built.adapters {
        None => {
            weights::save(&weights::variables(&built.base), &out.join("model.safetensors"))?;
            loader::copy_model_files(&built.dir, out)
        }
        Some(adapters) => {
            weights::save(&weights::variables(adapters), &out.join("adapter_model.safetensors"))?;
            let base = p.model.clone().unwrap_or_else(|| built.dir.display().to_string());
            let config = adapter::adapter_config(p.lora.as_ref().expect("defaults filled"), &base);
            let path = out.join("adapter_config.json");
            std::fs::write(&path, serde_json::to_string_pretty(&config).expect("config serializes"))
                .map_err(|e| StageError::io(&path, e))
        }
    }
}
