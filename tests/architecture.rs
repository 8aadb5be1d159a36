//! The architecture, checked: a module graph of both crates, built from every path their
//! sources name (`use` trees and paths in code, parsed with syn, `crate::`/`super::` resolved to
//! the module they land in), must have no import circles; the model (`t5/`) never imports
//! training or the stage kinds; the device layer (`torch/`) never imports the model; and the
//! runner uses the stages crate only through its stage API and its `tools`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;
use syn::visit::Visit;

/// A crate's modules (as `a::b` paths, the root as "") and the modules each one names.
struct Modules {
    edges: BTreeMap<String, BTreeSet<String>>,
    /// Paths into another crate, by the module naming them (`sumflow_stages::tools::…`).
    external: BTreeMap<String, BTreeSet<String>>,
}

/// The module a source file is (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Collects every path a file names, as segments.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn use_tree(&mut self, prefix: Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                let mut next = prefix;
                next.push(p.ident.to_string());
                self.use_tree(next, &p.tree);
            }
            syn::UseTree::Name(n) => {
                let mut path = prefix;
                if n.ident != "self" {
                    path.push(n.ident.to_string());
                }
                self.0.push(path);
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix;
                path.push(r.ident.to_string());
                self.0.push(path);
            }
            syn::UseTree::Glob(_) => self.0.push(prefix),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix.clone(), t)),
        }
    }
}

impl<'a> Visit<'a> for Paths {
    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        self.use_tree(Vec::new(), &u.tree);
    }
    fn visit_path(&mut self, p: &'a syn::Path) {
        self.0.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
    /// Test modules may reach anywhere.
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        let is_test =
            m.attrs.iter().any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"));
        if !is_test {
            syn::visit::visit_item_mod(self, m);
        }
    }
}

/// The module graph of the crate whose sources are in `src`; files of test modules are left
/// out, and so are tests (they may reach anywhere).
fn modules(src: &Path) -> Modules {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let known: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut m = Modules { edges: BTreeMap::new(), external: BTreeMap::new() };
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy();
        if name.contains("tests") || name == "main.rs" {
            continue;
        }
        let here = module_of(src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut paths = Paths::default();
        paths.visit_file(&ast);
        let mut names = BTreeSet::new();
        for path in paths.0 {
            let mut segments: Vec<String> = here.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
            let mut rest = path.as_slice();
            match rest.first().map(String::as_str) {
                Some("crate") => {
                    segments.clear();
                    rest = &rest[1..];
                }
                Some("super") => {
                    while rest.first().is_some_and(|s| s == "super") {
                        segments.pop();
                        rest = &rest[1..];
                    }
                }
                Some("self") => rest = &rest[1..],
                Some("sumflow_stages") => {
                    m.external.entry(here.clone()).or_default().insert(path.join("::"));
                    continue;
                }
                // A path relative to this module: a child module it names, if any.
                Some(first) if known.contains(&[segments.clone(), vec![first.to_string()]].concat().join("::")) => {}
                _ => continue,
            }
            // `pub(crate)`, `pub(super)`: a visibility, not a path into a module.
            if rest.is_empty() {
                continue;
            }
            // The longest module that the path names.
            let mut target = segments.join("::");
            for s in rest {
                segments.push(s.clone());
                let candidate = segments.join("::");
                if known.contains(&candidate) {
                    target = candidate;
                } else {
                    break;
                }
            }
            // A module naming its own children (declaring or re-exporting them) is ownership,
            // not an import.
            let owns = target.starts_with(&here) && target != here;
            if target != here && !owns {
                names.insert(target);
            }
        }
        m.edges.entry(here).or_default().extend(names);
    }
    m
}

/// The import circles of a module graph, each as its modules.
fn circles(m: &Modules) -> Vec<Vec<String>> {
    let mut g: DiGraph<&str, ()> = DiGraph::new();
    let mut ix = BTreeMap::new();
    for name in m.edges.keys().chain(m.edges.values().flatten()) {
        ix.entry(name.as_str()).or_insert_with(|| g.add_node(name.as_str()));
    }
    for (from, tos) in &m.edges {
        for to in tos {
            g.add_edge(ix[from.as_str()], ix[to.as_str()], ());
        }
    }
    tarjan_scc(&g)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| c.into_iter().map(|n| g[n].to_string()).collect())
        .collect()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn neither_crate_has_an_import_circle() {
    for src in ["src", "stages/src"] {
        let m = modules(&root().join(src));
        assert!(m.edges.len() > 20, "{src}: only {} modules found", m.edges.len());
        let found = circles(&m);
        assert!(found.is_empty(), "{src}: import circles: {found:?}");
    }
}

#[test]
fn dependencies_point_one_way() {
    let m = modules(&root().join("stages/src"));
    let names = |prefix: &str| -> Vec<(String, String)> {
        m.edges
            .iter()
            .filter(|(from, _)| *from == prefix || from.starts_with(&format!("{prefix}::")))
            .flat_map(|(from, tos)| tos.iter().map(move |to| (from.clone(), to.clone())))
            .collect()
    };
    let below = |from: &str, to: &str, allowed: &[&str]| {
        allowed.iter().any(|a| to == *a || to.starts_with(&format!("{a}::")) || to.starts_with(&format!("{from}::")))
    };
    // The model: the device layer, its own parts, the plumbing and the tokenizer; never training
    // nor any stage kind.
    for (from, to) in names("t5") {
        let allowed = ["t5", "torch", "error", "runtime", "stage", "io", "data::tokenizer"];
        assert!(below("t5", &to, &allowed), "{from} imports {to}");
    }
    // The device layer knows nothing of the model.
    for (from, to) in names("torch") {
        assert!(below("torch", &to, &["torch", "error", "runtime"]), "{from} imports {to}");
    }
    // PEFT files sit above the model, below the stages.
    for (from, to) in names("adapter") {
        assert!(below("adapter", &to, &["t5", "torch", "error", "io"]), "{from} imports {to}");
    }
}

#[test]
fn the_runner_uses_the_stage_api_and_the_tools_only() {
    let api = [
        "StageError",
        "panic_message",
        "DynStage",
        "Params",
        "Registry",
        "AttentionBackend",
        "RuntimeOptions",
        "Ranks",
        "DEFAULT_CUDA_ALLOC_CONF",
        "ArtifactKind",
        "FileInput",
        "InputRef",
        "InputSlot",
        "NoProgress",
        "OutputDecl",
        "ParamError",
        "Progress",
        "Resource",
        "Stage",
        "StageContext",
        "StageRecord",
        "tools",
    ];
    let m = modules(&root().join("src"));
    assert!(!m.external.is_empty());
    for (module, paths) in &m.external {
        for path in paths {
            let item = path.split("::").nth(1).unwrap_or("");
            assert!(api.contains(&item), "{module} uses {path}, which is not the stage API nor a tool");
        }
    }
    // And the stages crate exports nothing else: its root names only those.
    let lib = std::fs::read_to_string(root().join("stages/src/lib.rs")).unwrap();
    let public: Vec<&str> = lib.lines().filter(|l| l.starts_with("pub ")).collect();
    assert_eq!(public.iter().filter(|l| l.starts_with("pub mod")).collect::<Vec<_>>(), [&"pub mod tools;"]);
}
