//! Errors about a pipeline file: each names the dotted path (`stages.quick.input`), points at
//! file:line:column and shows the offending line, rendered by codespan-reporting.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use codespan_reporting::diagnostic::{Diagnostic as Codespan, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{emit_into_string, Config};

/// A 1-based line and column in a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Dotted path of the offending field (`stages.scores.baseline`), or empty.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Where it is, when known.
    pub pos: Option<Pos>,
}

/// Every problem found in one pipeline file.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// The file.
    pub file: PathBuf,
    /// Its text (to show the offending lines).
    pub text: String,
    /// The problems, in file order.
    pub list: Vec<Diagnostic>,
}

impl Diagnostics {
    fn byte_range(&self, pos: Pos) -> Range<usize> {
        let line_start: usize = self.text.split_inclusive('\n').take(pos.line - 1).map(str::len).sum();
        let line = self.text[line_start..].lines().next().unwrap_or("");
        let start = line_start + line.chars().take(pos.col - 1).map(char::len_utf8).sum::<usize>();
        // Underline the token: up to a key's `: `, a separator of flow YAML, or the line's end.
        let rest = &self.text[start..line_start + line.len()];
        let key_end = rest.find(": ").or_else(|| rest.strip_suffix(':').map(str::len));
        let len = rest.find([',', '}', ']', '#']).into_iter().chain(key_end).min().unwrap_or(rest.len());
        let len = rest[..len].trim_end().len().max(1);
        start..(start + len).min(self.text.len())
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.file.display().to_string();
        let file = SimpleFile::new(name.as_str(), self.text.as_str());
        let config = Config::default();
        for d in &self.list {
            let message = if d.path.is_empty() { d.message.clone() } else { format!("{}: {}", d.path, d.message) };
            let mut diag = Codespan::error().with_message(message);
            if let Some(pos) = d.pos {
                diag = diag.with_labels(vec![Label::primary((), self.byte_range(pos))]);
            } else {
                diag = diag.with_notes(vec![format!("in {name}")]);
            }
            let text = emit_into_string(&config, &file, &diag).map_err(|_| fmt::Error)?;
            f.write_str(&text)?;
        }
        let n = self.list.len();
        write!(f, "{name}: {n} error{} found; nothing was run", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}
