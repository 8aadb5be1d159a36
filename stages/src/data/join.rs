//! The `join` stage: a table with columns added from other tables by a shared id — e.g. the
//! lab's results layout (`id`, `dialogue`, `human_baseline_summaries` and one column per model)
//! from the test rows and each `generate` stage's predictions.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::io::table::Table;
use crate::stage::{ArtifactKind, InputRef, InputSlot, OutputDecl, ParamError, Stage, StageContext};

/// A column taken from another table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Added {
    /// The table it comes from.
    pub from: InputRef,
    /// Its column there.
    #[serde(default = "prediction")]
    pub column: String,
}

fn prediction() -> String {
    "prediction".into()
}

/// Params of `join`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinParams {
    /// The table whose rows (all of them, in order) the output keeps.
    pub input: InputRef,
    /// The id column, in every table.
    #[serde(default = "id")]
    pub on: String,
    /// Columns kept from `input`: output name → input column (default: all, as they are).
    #[serde(default)]
    pub columns: IndexMap<String, String>,
    /// Columns added: output name → where it comes from (none: `columns` picks and renames).
    #[serde(default)]
    pub add: IndexMap<String, Added>,
}

fn id() -> String {
    "id".into()
}

/// The `join` stage.
pub struct Join;

impl Stage for Join {
    type Params = JoinParams;
    const KIND: &'static str = "join";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "add columns from other tables by id (e.g. the lab's results layout)";

    fn inputs(&self, p: &JoinParams) -> Vec<InputSlot> {
        let mut slots =
            vec![InputSlot { field: "input".into(), reference: p.input.clone(), accepts: &[ArtifactKind::Table] }];
        slots.extend(p.add.iter().map(|(name, a)| InputSlot {
            field: format!("add/{name}"),
            reference: a.from.clone(),
            accepts: &[ArtifactKind::Table],
        }));
        slots
    }

    fn outputs(&self, _: &JoinParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "all".into(), kind: ArtifactKind::Table }]
    }

    fn check(&self, p: &JoinParams) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if p.add.is_empty() && p.columns.is_empty() {
            errors
                .push(ParamError::new("add", "add a column, or name the `columns` to keep (this would copy `input`)"));
        }
        for name in p.add.keys() {
            if p.columns.contains_key(name) {
                errors.push(ParamError::new(format!("add.{name}"), "is also in `columns`"));
            }
        }
        errors
    }

    fn run(&self, p: &JoinParams, ctx: &StageContext) -> Result<(), StageError> {
        let left = Table::read_artifact(ctx.input("input")?)?;
        let source = format!("input {}", p.input);
        let ids = left.column(&p.on, &source)?;
        let (mut names, mut columns): (Vec<String>, Vec<Vec<String>>) = if p.columns.is_empty() {
            let names = left.names().to_vec();
            let cols =
                names.iter().map(|n| left.column(n, &source).map(<[String]>::to_vec)).collect::<Result<_, _>>()?;
            (names, cols)
        } else {
            let cols = p
                .columns
                .values()
                .map(|c| left.column(c, &source).map(<[String]>::to_vec))
                .collect::<Result<_, _>>()?;
            (p.columns.keys().cloned().collect(), cols)
        };
        for (name, a) in &p.add {
            let right = Table::read_artifact(ctx.input(&format!("add/{name}"))?)?;
            let rsource = format!("{} (for `{name}`)", a.from);
            let index: HashMap<&str, usize> =
                right.column(&p.on, &rsource)?.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect();
            let values = right.column(&a.column, &rsource)?;
            let col = ids
                .iter()
                .map(|id| {
                    index
                        .get(id.as_str())
                        .map(|&i| values[i].clone())
                        .ok_or_else(|| StageError::data(rsource.clone(), format!("no row with {} `{id}`", p.on)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            names.push(name.clone());
            columns.push(col);
        }
        let table = Table::new(names, columns, &source)?;
        table.write_artifact(&ctx.output_dir("all")?, &format!("join of {}", p.input), 0)
    }

    fn summary(&self, _: &JoinParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        let meta = Table::read_meta(outputs.get("all")?).ok()?;
        Some(format!("{} rows", meta.rows))
    }
}
