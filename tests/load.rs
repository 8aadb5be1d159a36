//! The `load` stage on good and bad data files: every error names the file and the line or row.

use crate::common::{shared, Sandbox};

/// Runs a one-stage pipeline loading `file` (with extra params) and returns the result.
fn load(s: &Sandbox, file: &str, extra: &str) -> crate::common::Output {
    s.write("p.yaml", format!("name: t\nstages:\n  data: {{kind: load, path: {file}{extra}}}\n"));
    s.run(&["run", "p.yaml"])
}

fn fails_with(s: &Sandbox, file: &str, extra: &str, parts: &[&str]) {
    let before = s.entries();
    let out = load(s, file, extra);
    assert_eq!(out.code, 1, "expected failure:\n{}\n{}", out.stdout, out.stderr);
    for p in parts {
        assert!(out.stderr.contains(p), "missing {p:?} in:\n{}", out.stderr);
    }
    assert_eq!(s.entries(), before, "a failed load commits nothing");
}

#[test]
fn missing_column_lists_the_found_ones() {
    let s = Sandbox::new();
    s.write("d.csv", "id,text\n1,hello\n");
    fails_with(&s, "d.csv", ", require: [summary]", &["d.csv: no column `summary` (found: id, text)"]);
}

#[test]
fn empty_file_and_header_only_file() {
    let s = Sandbox::new();
    s.write("empty.csv", "");
    fails_with(&s, "empty.csv", "", &["empty.csv: file is empty"]);
    s.write("header.csv", "id,text\n");
    fails_with(&s, "header.csv", "", &["header.csv: has no rows"]);
}

#[test]
fn invalid_utf8_names_the_line() {
    let s = Sandbox::new();
    s.write("bad.csv", b"id,text\n1,fine\n2,caf\xe9\n".as_slice());
    fails_with(&s, "bad.csv", "", &["bad.csv:3: invalid UTF-8 in field 2"]);
}

#[test]
fn ragged_row_names_the_line() {
    let s = Sandbox::new();
    s.write("r.csv", "id,text\n1,a\n2,b,c\n");
    fails_with(&s, "r.csv", "", &["r.csv:3: row has 3 fields, the header has 2"]);
}

#[test]
fn empty_text_is_an_error_or_skipped_and_counted() {
    let s = Sandbox::new();
    s.write("e.csv", "id,text\n1,a\n2,\"  \"\n3,c\n4,\n");
    fails_with(&s, "e.csv", "", &["e.csv:3: column `text` is empty", "empty_text: skip"]);
    let out = load(&s, "e.csv", ", empty_text: skip");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("data: all: 2 rows, 2 skipped as empty"), "{}", out.stdout);
}

#[test]
fn duplicate_ids_name_both_rows() {
    let s = Sandbox::new();
    s.write("d.csv", "id,text\na,1\nb,2\na,3\n");
    fails_with(&s, "d.csv", "", &["d.csv:4: duplicate id `a` (first at d.csv:2)"]);
    // A multi-line quoted field still gives the right line.
    s.write("m.csv", "key,text\nk1,\"two\nlines\"\nk1,x\n");
    fails_with(&s, "m.csv", ", id_column: key", &["m.csv:4: duplicate key `k1` (first at m.csv:2)"]);
}

#[test]
fn jsonl_and_parquet_load_like_csv() {
    let s = Sandbox::new();
    s.write("d.jsonl", "{\"id\": \"a\", \"n\": 1}\n{\"id\": \"b\", \"n\": 2.5}\n");
    let out = load(&s, "d.jsonl", "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("data: all: 2 rows"), "{}", out.stdout);
    s.write("bad.jsonl", "{\"id\": \"a\"}\n{\"id\": null}\n");
    fails_with(&s, "bad.jsonl", "", &["bad.jsonl:2: `id` is null"]);
    // The Parquet artifact written above loads back as a Parquet input.
    let parquet =
        std::fs::read_dir(s.cache().join("artifacts")).unwrap().next().unwrap().unwrap().path().join("table.parquet");
    let out = load(&s, parquet.to_str().unwrap(), ", rename: {n: number}, require: [number]");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn dialogsum_folder_gives_one_output_per_split() {
    let s = Sandbox::new();
    let out = load(&s, shared("dialogsum").to_str().unwrap(), "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("test: 1500 rows; train: 12460 rows; validation: 500 rows"), "{}", out.stdout);
}

#[test]
fn missing_file_fails_before_running() {
    let s = Sandbox::new();
    fails_with(&s, "nope.csv", "", &["error: stages.data.path: `nope.csv` does not exist\n  ┌─ p.yaml:3:22"]);
}
