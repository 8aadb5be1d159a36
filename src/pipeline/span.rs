//! Where each key and value of a pipeline file sits (line, column), found by walking
//! yaml-rust2's parse events, so errors about `stages.scores.baseline` can point at the line.
//! serde_yaml does the deserializing; this index only answers "where is this path?". A path
//! through an alias (`train-lora: *training`, or a merge key `<<: *training`) is found where
//! the anchored node was written.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diagnostic::Pos;

/// Positions of keys and values by dotted path (`stages.scores.predictions[1]`), and the keys a
/// mapping holds twice (YAML parsers keep the last silently).
#[derive(Debug, Default)]
pub struct SpanIndex {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
    /// (dotted path, where it is again, where it was first), in file order.
    pub duplicates: Vec<(String, Pos, Pos)>,
    /// The path of each alias → the path of the node its anchor marks.
    aliases: HashMap<String, String>,
}

impl SpanIndex {
    /// Indexes `text`; a file that does not parse gives an empty index (serde_yaml reports why).
    pub fn new(text: &str) -> SpanIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return SpanIndex::default();
        }
        builder.index
    }

    /// Where the key of `path` is, else its value, else the nearest enclosing path's.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut path = path.trim_end_matches('.');
        loop {
            if let Some(p) = self.exact(path, false) {
                return Some(p);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// Where the value of `path` is (else as [`SpanIndex::find`]).
    pub fn find_value(&self, path: &str) -> Option<Pos> {
        self.exact(path, true).or_else(|| self.find(path))
    }

    /// The key (or only the value) of exactly `path`, also where it was written through an
    /// alias: the longest prefix that is an alias, or holds a merge key, leads to its anchor.
    fn exact(&self, path: &str, value_only: bool) -> Option<Pos> {
        let here =
            if value_only { self.values.get(path) } else { self.keys.get(path).or_else(|| self.values.get(path)) };
        if let Some(p) = here {
            return Some(*p);
        }
        let cuts = path.match_indices(['.', '[']).map(|(i, _)| i).rev();
        for cut in cuts {
            let (head, rest) = path.split_at(cut);
            for alias in [head.to_string(), format!("{head}.<<")] {
                if let Some(anchor) = self.aliases.get(&alias) {
                    // An anchor inside its own alias's path would loop.
                    if !path.starts_with(anchor.as_str()) {
                        if let Some(p) = self.exact(&format!("{anchor}{rest}"), value_only) {
                            return Some(p);
                        }
                    }
                }
            }
        }
        None
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    index: SpanIndex,
    /// Anchor id → the path of the node it marks.
    anchors: HashMap<usize, String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Builder {
    /// The path of the node that starts now: the current key or sequence slot.
    fn node_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { path, key }) => join(path, key.as_deref().unwrap_or("?")),
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
        }
    }

    /// A value just ended: the parent map wants a key next, a sequence moves on.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos { line: mark.line(), col: mark.col() + 1 };
        match ev {
            Event::Scalar(value, ..) if self.expecting_key() => {
                let path = match self.stack.last() {
                    Some(Frame::Map { path, .. }) => join(path, &value),
                    _ => unreachable!("expecting_key implies a map"),
                };
                if let Some(first) = self.index.keys.get(&path) {
                    self.index.duplicates.push((path.clone(), pos, *first));
                } else {
                    self.index.keys.insert(path, pos);
                }
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                    *key = Some(value);
                }
            }
            Event::Scalar(_, _, anchor, _) => {
                let path = self.node_path();
                if anchor > 0 {
                    self.anchors.insert(anchor, path.clone());
                }
                self.index.values.insert(path, pos);
                self.value_done();
            }
            Event::Alias(anchor) => {
                let path = self.node_path();
                if let Some(target) = self.anchors.get(&anchor) {
                    self.index.aliases.insert(path.clone(), target.clone());
                }
                self.index.values.insert(path, pos);
                self.value_done();
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                let path = self.node_path();
                if anchor > 0 {
                    self.anchors.insert(anchor, path.clone());
                }
                self.index.values.insert(path.clone(), pos);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_values_and_sequence_items() {
        let text = "name: x\nstages:\n  a: {kind: load, path: f.csv}\n  b:\n    kind: score\n    predictions: [p, q]\n";
        let idx = SpanIndex::new(text);
        assert_eq!(idx.find("stages.a"), Some(Pos { line: 3, col: 3 }));
        assert_eq!(idx.find("stages.a.path"), Some(Pos { line: 3, col: 19 }));
        assert_eq!(idx.find_value("stages.a.path"), Some(Pos { line: 3, col: 25 }));
        assert_eq!(idx.find("stages.b.predictions[1]"), Some(Pos { line: 6, col: 22 }));
        // An unknown path falls back to its nearest known parent.
        assert_eq!(idx.find("stages.b.nope"), Some(Pos { line: 4, col: 3 }));
        assert!(idx.duplicates.is_empty());
    }

    #[test]
    fn paths_through_aliases_and_merge_keys_are_found_at_the_anchor() {
        let text = "defaults:\n  train-full: &t\n    epochs: 2\n    lr: x\n  train-lora: *t\nstages:\n  a:\n    <<: *t\n    kind: train-full\n";
        let idx = SpanIndex::new(text);
        assert_eq!(idx.find("defaults.train-lora.lr"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(idx.find_value("defaults.train-lora.lr"), Some(Pos { line: 4, col: 9 }));
        assert_eq!(idx.find("stages.a.epochs"), Some(Pos { line: 3, col: 5 }));
        assert_eq!(idx.find("stages.a.kind"), Some(Pos { line: 9, col: 5 }));
        // Not written anywhere: the nearest enclosing path.
        assert_eq!(idx.find("defaults.train-lora.nope"), Some(Pos { line: 5, col: 3 }));
    }

    #[test]
    fn keys_given_twice_are_found() {
        let idx = SpanIndex::new("stages:\n  a: {kind: load}\n  a: {kind: score, kind: x}\n");
        let found: Vec<(&str, usize, usize)> =
            idx.duplicates.iter().map(|(p, at, first)| (p.as_str(), at.line, first.line)).collect();
        // The second `a`'s keys meet the first's paths too: `load` reports the outermost only.
        assert_eq!(found, [("stages.a", 3, 2), ("stages.a.kind", 3, 2), ("stages.a.kind", 3, 2)]);
    }
}
