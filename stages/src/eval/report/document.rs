//! The report as one list of sections, rendered twice: to Markdown (`report.md`, plots as image
//! links to the SVG files beside it) and to a self-contained HTML page (`report.html`, plots
//! inline). Both renderings walk the same list, so they never disagree on what is shown or in
//! which order.

use std::fmt::Write as _;

/// A table: a header row and body rows of text cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, each as wide as the header.
    pub rows: Vec<Vec<String>>,
}

/// One piece of a section.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A paragraph.
    Text(String),
    /// A table.
    Table(Grid),
    /// A plot: its file name beside the report, and its SVG.
    Plot {
        /// File name (`rouge.svg`).
        file: String,
        /// The SVG document.
        svg: String,
    },
    /// A side-by-side example: its id, the dialogue, and the summaries.
    Example {
        /// The row's id.
        id: String,
        /// The dialogue (shown small in HTML, left out of Markdown).
        dialogue: String,
        /// Who summarized what.
        summaries: Grid,
    },
}

/// A headed part of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The heading (none for the part under the title).
    pub heading: Option<String>,
    /// What it holds, in order.
    pub blocks: Vec<Block>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The report's title.
    pub title: String,
    /// Its sections, in order.
    pub sections: Vec<Section>,
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}\
th{background:#f0f0f0}svg{max-width:100%;height:auto}.dialogue{font-size:90%;color:#555}";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\n', "<br>")
}

/// A Markdown table cell: no line breaks or pipes inside.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Grid {
    fn markdown(&self) -> String {
        let header: Vec<String> = self.header.iter().map(|h| cell(h)).collect();
        let mut out = format!("| {} |\n|{}|\n", header.join(" | "), vec!["---"; self.header.len()].join("|"));
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }

    fn html(&self) -> String {
        let mut out = String::from("<table><tr>");
        for h in &self.header {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr>");
        for r in &self.rows {
            out.push_str("<tr>");
            for c in r {
                let _ = write!(out, "<td>{}</td>", escape(c));
            }
            out.push_str("</tr>");
        }
        out + "</table>"
    }
}

impl Document {
    /// `report.md`.
    pub fn markdown(&self) -> String {
        let mut md = format!("# {}\n", self.title);
        for section in &self.sections {
            if let Some(h) = &section.heading {
                let _ = write!(md, "\n## {h}\n");
            }
            for block in &section.blocks {
                md.push('\n');
                match block {
                    Block::Text(t) => {
                        let _ = writeln!(md, "{t}");
                    }
                    Block::Table(g) => md.push_str(&g.markdown()),
                    Block::Plot { file, .. } => {
                        let _ = writeln!(md, "![{file}]({file})");
                    }
                    Block::Example { id, summaries, .. } => {
                        let _ = write!(md, "### {id}\n\n{}", summaries.markdown());
                    }
                }
            }
        }
        md
    }

    /// `report.html`: the same sections, self-contained (plots inline).
    pub fn html(&self) -> String {
        let title = escape(&self.title);
        let mut html = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>"
        );
        for section in &self.sections {
            if let Some(h) = &section.heading {
                let _ = write!(html, "<h2 id=\"{}\">{}</h2>", anchor(h), escape(h));
            }
            for block in &section.blocks {
                match block {
                    Block::Text(t) => {
                        let _ = write!(html, "<p>{}</p>", escape(t));
                    }
                    Block::Table(g) => html.push_str(&g.html()),
                    Block::Plot { svg, .. } => html.push_str(svg),
                    Block::Example { id, dialogue, summaries } => {
                        let _ = write!(
                            html,
                            "<h3>{}</h3><p class=\"dialogue\">{}</p>{}",
                            escape(id),
                            escape(dialogue),
                            summaries.html()
                        );
                    }
                }
            }
        }
        html + "</body></html>\n"
    }
}

/// A heading's anchor, so a link can open the report at it (`report.html#sweep-over-r-lr`):
/// lowercase letters and digits, the rest runs of `-`.
fn anchor(heading: &str) -> String {
    let mut out = String::new();
    for c in heading.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Document {
        let grid = Grid { header: vec!["model".into(), "rouge1".into()], rows: vec![vec!["a|b".into(), "0.5".into()]] };
        Document {
            title: "T <1>".into(),
            sections: vec![
                Section { heading: None, blocks: vec![Block::Text("Intro & more".into()), Block::Table(grid.clone())] },
                Section {
                    heading: Some("Plots".into()),
                    blocks: vec![Block::Plot { file: "p.svg".into(), svg: "<svg></svg>".into() }],
                },
                Section {
                    heading: Some("Examples".into()),
                    blocks: vec![Block::Example { id: "x1".into(), dialogue: "A: hi\nB: yo".into(), summaries: grid }],
                },
            ],
        }
    }

    #[test]
    fn markdown_and_html_show_the_same_sections_in_the_same_order() {
        let d = doc();
        assert_eq!(
            d.markdown(),
            "# T <1>\n\nIntro & more\n\n| model | rouge1 |\n|---|---|\n| a\\|b | 0.5 |\n\n## Plots\n\n![p.svg](p.svg)\n\n## Examples\n\n### x1\n\n| model | rouge1 |\n|---|---|\n| a\\|b | 0.5 |\n"
        );
        let html = d.html();
        let order = [
            "<h1>T &lt;1&gt;</h1>",
            "<p>Intro &amp; more</p>",
            "<td>a|b</td>",
            "<h2 id=\"plots\">Plots</h2>",
            "<svg></svg>",
            "<h2 id=\"examples\">Examples</h2>",
            "<h3>x1</h3>",
            "A: hi<br>B: yo",
        ];
        let at: Vec<usize> = order.iter().map(|s| html.find(s).unwrap_or_else(|| panic!("{s} in {html}"))).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    }
}
