//! The model commands: `make-model`, `params` and `summarize`. They need libtorch (the `torch`
//! feature); without it they say how to build sumflow with it.

use std::path::Path;

use crate::error::Error;

/// What `sumflow params` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ParamCount {
    /// Parameters the optimizer updates.
    pub trainable: i64,
    /// All parameters.
    pub total: i64,
}

impl ParamCount {
    /// The lab's `print_number_of_trainable_model_parameters` output.
    pub fn render(&self) -> String {
        format!(
            "trainable model parameters: {}\nall model parameters: {}\npercentage of trainable model parameters: {:.2}%\n",
            self.trainable,
            self.total,
            100.0 * self.trainable as f64 / self.total as f64
        )
    }
}

#[cfg(feature = "torch")]
mod imp {
    use super::*;
    use sumflow_stages::generate::{open, summarize as generate_all, GenerateOptions};
    use sumflow_stages::hub::fetch_model;
    use sumflow_stages::lora::LoraSettings;
    use sumflow_stages::make_model::{make_model as make, MakeModelParams};
    use sumflow_stages::t5::decode::Strategy;
    use sumflow_stages::t5::device::{DeviceChoice, DtypeChoice};
    use sumflow_stages::t5::loader::read_config;
    use sumflow_stages::t5::model::count_parameters;
    use sumflow_stages::t5::T5Config;
    use sumflow_stages::tokenize::{render, LAB_TEMPLATE};
    use sumflow_stages::NoProgress;

    fn local(model: &str) -> Result<std::path::PathBuf, Error> {
        if model.starts_with("hf://") {
            Ok(fetch_model(model)?)
        } else {
            Ok(model.into())
        }
    }

    /// Writes a random-init model of `arch` with a tokenizer trained on `data` into `out`.
    pub fn make_model(arch: &str, data: &Path, vocab: u32, seed: i64, out: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let text_columns = vec!["dialogue".into(), "summary".into()];
        let p = MakeModelParams {
            arch: arch.into(),
            tokenizer_data: data.display().to_string(),
            vocab_size: vocab,
            text_columns,
            seed,
        };
        Ok(make(&p, out)?)
    }

    /// Parses `r=32,alpha=32,dropout=0.05,targets=q+v` (targets also comma-separated at the end).
    fn parse_lora(spec: &str) -> Result<LoraSettings, Error> {
        let mut s = LoraSettings::default();
        let mut targets: Vec<String> = Vec::new();
        let mut in_targets = false;
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let bad = || Error::Usage(format!("--lora {spec}: write r=32,alpha=32,dropout=0.05,targets=q,v"));
            match part.split_once('=') {
                Some(("r", v)) => s.r = v.parse().map_err(|_| bad())?,
                Some(("alpha", v)) => s.alpha = v.parse().map_err(|_| bad())?,
                Some(("dropout", v)) => s.dropout = v.parse().map_err(|_| bad())?,
                Some(("targets", v)) => {
                    in_targets = true;
                    targets.extend(v.split('+').map(str::to_string));
                }
                None if in_targets => targets.push(part.to_string()),
                _ => return Err(bad()),
            }
        }
        if !targets.is_empty() {
            s.targets = targets;
        }
        if let Some((field, message)) = s.check().into_iter().next() {
            return Err(Error::Usage(format!("--lora {field}: {message}")));
        }
        Ok(s)
    }

    /// Writes `base` with the adapter merged into its weights to `out`.
    pub fn merge(adapter: &Path, base: &str, out: &Path) -> Result<(), Error> {
        Ok(sumflow_stages::lora::merge(adapter, &local(base)?, out)?)
    }

    /// Counts the parameters of an architecture preset or of a model folder's config.
    pub fn params(model: &str, lora: Option<&str>) -> Result<ParamCount, Error> {
        let config = match T5Config::preset(model) {
            Some(c) => c,
            None => read_config(&local(model)?)?,
        };
        let lora = lora.map(parse_lora).transpose()?;
        let (trainable, total) = count_parameters(&config, lora.as_ref());
        Ok(ParamCount { trainable, total })
    }

    /// Summaries of `dialogues` with the lab's prompt.
    pub fn summarize(
        model: &str,
        adapter: Option<&Path>,
        dialogues: &[String],
        max_new_tokens: i64,
        num_beams: i64,
        device: &str,
    ) -> Result<Vec<String>, Error> {
        let device = match device {
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda,
            "auto" => DeviceChoice::Auto,
            other => return Err(Error::Usage(format!("--device {other}: use cpu, cuda or auto"))),
        };
        let m = open(&local(model)?, adapter, device, DtypeChoice::Auto, false)?;
        let decoding = if num_beams > 1 { Strategy::Beam { num_beams, length_penalty: 1.0 } } else { Strategy::Greedy };
        let o = GenerateOptions {
            max_source_tokens: 512,
            max_new_tokens,
            decoding,
            batch_tokens: None,
            one_at_a_time: false,
            cuda_graphs: false,
        };
        let prompts: Vec<String> = dialogues.iter().map(|d| render(LAB_TEMPLATE, d)).collect();
        Ok(generate_all(&m, &prompts, &o, &NoProgress)?.summaries.into_iter().map(|s| s.0).collect())
    }

    /// Writes the rows of `input` plus a `summary` column to the CSV `output`.
    #[allow(clippy::too_many_arguments)]
    pub fn summarize_file(
        model: &str,
        adapter: Option<&Path>,
        input: &Path,
        output: &Path,
        column: &str,
        max_new: i64,
        beams: i64,
        device: &str,
    ) -> Result<usize, Error> {
        let table = sumflow_stages::load::read_table(input, None)?;
        let name = input.display().to_string();
        let summaries = summarize(model, adapter, table.column(column, &name)?, max_new, beams, device)?;
        let csv_err = |e: csv::Error| Error::Usage(format!("{}: {e}", output.display()));
        let mut w = csv::Writer::from_path(output).map_err(csv_err)?;
        w.write_record(table.names().iter().map(String::as_str).chain(["summary"])).map_err(csv_err)?;
        let cols: Vec<&[String]> = table.names().iter().map(|n| table.column(n, &name)).collect::<Result<_, _>>()?;
        for (r, summary) in summaries.iter().enumerate() {
            w.write_record(cols.iter().map(|c| c[r].as_str()).chain([summary.as_str()])).map_err(csv_err)?;
        }
        w.flush().map_err(|e| Error::io(output, e))?;
        Ok(table.num_rows())
    }
}

#[cfg(not(feature = "torch"))]
mod imp {
    use super::*;

    fn unavailable() -> Error {
        Error::Usage(
            "this sumflow was built without libtorch: build it with `--features torch` (`make lab` does)".into(),
        )
    }
    /// Needs libtorch.
    pub fn make_model(_: &str, _: &Path, _: u32, _: i64, _: &Path) -> Result<(), Error> {
        Err(unavailable())
    }
    /// Needs libtorch.
    pub fn params(_: &str, _: Option<&str>) -> Result<ParamCount, Error> {
        Err(unavailable())
    }
    /// Needs libtorch.
    pub fn summarize(_: &str, _: Option<&Path>, _: &[String], _: i64, _: i64, _: &str) -> Result<Vec<String>, Error> {
        Err(unavailable())
    }
    /// Needs libtorch.
    pub fn merge(_: &Path, _: &str, _: &Path) -> Result<(), Error> {
        Err(unavailable())
    }
    /// Needs libtorch.
    #[allow(clippy::too_many_arguments)]
    pub fn summarize_file(
        _: &str,
        _: Option<&Path>,
        _: &Path,
        _: &Path,
        _: &str,
        _: i64,
        _: i64,
        _: &str,
    ) -> Result<usize, Error> {
        Err(unavailable())
    }
}

pub use imp::{make_model, merge, params, summarize, summarize_file};
