//! Everything printed: tables, csv, tsv and json, terminal detection and escaping.
//!
//! Whether stdout and stderr are terminals is decided once, in [`Output::new`]. Tables are
//! boxed on a terminal and a stable plain layout when piped; control characters from the
//! database are escaped before they reach a terminal. A result wider than the terminal
//! prints as records (psql's `\x`) rather than wrapping. JSON loses nothing: keys in column
//! order and all distinct, numbers and json values written as the server's own text. Output
//! knows nothing about tokens.

use std::io::{self, IsTerminal, Write};

use comfy_table::{ContentArrangement, Table, presets};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use unicode_width::UnicodeWidthStr;

use crate::cli::{Format, GlobalArgs};
use crate::sql::{JsonKind, StatementResult};

/// How and where to print.
#[derive(Debug, Clone)]
pub struct Output {
    /// Data format on stdout.
    pub format: Format,
    /// Omit csv/tsv header rows.
    pub no_header: bool,
    /// Results only: no statistics on stderr.
    pub quiet: bool,
    /// Verbosity (0 = warnings only).
    pub verbose: u8,
    /// Print result tables as records, one `column | value` line per column (psql's `\x`).
    pub expanded: bool,
    stdout_tty: bool,
    stderr_tty: bool,
    /// Columns of the terminal on stdout, when it is one and says.
    stdout_width: Option<usize>,
}

impl Output {
    /// Decides, once, what stdout and stderr are; `format` and `no_header` are the command's.
    pub fn new(global: &GlobalArgs, format: Format, no_header: bool) -> Output {
        Output {
            format,
            no_header,
            quiet: global.quiet,
            verbose: global.verbose,
            expanded: false,
            stdout_tty: io::stdout().is_terminal(),
            stderr_tty: io::stderr().is_terminal(),
            // The width comfy-table arranges a boxed table to (`None` unless stdout is a
            // terminal), so both agree on "too wide".
            stdout_width: Table::new().width().filter(|&w| w > 0).map(usize::from),
        }
    }

    /// Whether stdout is a terminal.
    pub fn stdout_is_terminal(&self) -> bool {
        self.stdout_tty
    }

    /// Whether stderr is a terminal.
    pub fn stderr_is_terminal(&self) -> bool {
        self.stderr_tty
    }

    /// Columns to fit stdout's lines in: the terminal's, else 80.
    pub fn width(&self) -> usize {
        self.stdout_width.unwrap_or(80)
    }

    /// Renders a table for stdout: boxed on a terminal, plain when piped; as records (psql's
    /// `\x`) when `expanded` is set or a boxed table would be wider than the terminal, so no
    /// cell is ever wrapped. No newline at the end.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) -> String {
        if self.expanded || self.too_wide(header, rows) {
            let mut records = render_expanded(header, rows, self.stdout_width);
            records.truncate(records.trim_end_matches('\n').len());
            records
        } else {
            render_table(header, rows, self.stdout_tty)
        }
    }

    /// Renders a table for stderr.
    pub fn stderr_table(&self, header: &[&str], rows: &[Vec<String>]) -> String {
        render_table(header, rows, self.stderr_tty)
    }

    /// Writes one statement's result in the chosen format.
    pub fn write_result(
        &self,
        out: &mut dyn Write,
        result: &StatementResult,
        first: bool,
    ) -> anyhow::Result<()> {
        match self.format {
            // `query` takes no `text`; were it given, a table is its text.
            Format::Table | Format::Text => {
                if result.returned_rows && result.columns.is_empty() {
                    // Zero columns (`select;`): psql's empty header rule, then the tag.
                    writeln!(out, "--")?;
                } else if result.returned_rows {
                    let header: Vec<&str> = result.columns.iter().map(String::as_str).collect();
                    let rows: Vec<Vec<String>> = result
                        .rows
                        .iter()
                        .map(|row| row.iter().map(|v| v.clone().unwrap_or_default()).collect())
                        .collect();
                    let table = self.table(&header, &rows);
                    // Records of no rows are nothing at all, as in psql.
                    if !table.is_empty() {
                        writeln!(out, "{table}")?;
                    }
                }
                if !result.tag.is_empty() {
                    writeln!(out, "{}", result.tag)?;
                }
            }
            Format::Csv | Format::Tsv => {
                if !result.returned_rows {
                    return Ok(());
                }
                if !first {
                    writeln!(out)?;
                }
                self.write_delimited(out, result)?;
            }
            Format::Json => {
                let keys = json_keys(&result.columns);
                for row in &result.rows {
                    let cells: Vec<JsonCell> = result
                        .kinds
                        .iter()
                        .zip(row)
                        .map(|(kind, value)| json_cell(*kind, value.as_deref()))
                        .collect();
                    let line = serde_json::to_string(&JsonRow(&keys, &cells))?;
                    if self.stdout_tty {
                        writeln!(out, "{}", escape_json_control(&line))?;
                    } else {
                        writeln!(out, "{line}")?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a boxed table would be wider than the terminal (and so wrap its cells).
    fn too_wide(&self, header: &[&str], rows: &[Vec<String>]) -> bool {
        self.stdout_width
            .is_some_and(|width| boxed_width(header, rows) > width)
    }

    fn write_delimited(&self, out: &mut dyn Write, result: &StatementResult) -> anyhow::Result<()> {
        if result.columns.is_empty() {
            // Zero columns: an empty header line and an empty line per row (the csv crate
            // would write `""` for an empty record, which reads as one empty string).
            let lines = result.rows.len() + usize::from(!self.no_header);
            out.write_all("\n".repeat(lines).as_bytes())?;
            return Ok(());
        }
        let escape = |text: &str| -> String {
            let text = if self.format == Format::Tsv {
                escape_tsv(text)
            } else {
                text.to_string()
            };
            if self.stdout_tty {
                escape_control(&text)
            } else {
                text
            }
        };
        let mut writer = csv::WriterBuilder::new()
            .delimiter(if self.format == Format::Tsv {
                b'\t'
            } else {
                b','
            })
            .quote_style(if self.format == Format::Tsv {
                csv::QuoteStyle::Never
            } else {
                csv::QuoteStyle::Necessary
            })
            .from_writer(&mut *out);
        if !self.no_header {
            writer.write_record(result.columns.iter().map(|c| escape(c)))?;
        }
        for row in &result.rows {
            writer.write_record(row.iter().map(|v| escape(v.as_deref().unwrap_or(""))))?;
        }
        writer.flush()?;
        Ok(())
    }
}

/// The width of the boxed table unwrapped: each column's widest cell plus one space each side,
/// and a border between and around the columns.
fn boxed_width(header: &[&str], rows: &[Vec<String>]) -> usize {
    let mut table = Table::new();
    table.set_header(header.iter().map(|h| escape_cell(h)));
    for row in rows {
        table.add_row(row.iter().map(|cell| escape_cell(cell)));
    }
    let widths = table.column_max_content_widths();
    widths.iter().map(|&w| usize::from(w) + 2).sum::<usize>() + widths.len() + 1
}

/// psql's expanded layout (`\x`): per row a `-[ RECORD n ]` rule, then one `name | value` line
/// per column, names padded to the widest, further lines of a value under it. The rule is as
/// wide as the widest line (as psql draws it), at most the terminal's width.
fn render_expanded(header: &[&str], rows: &[Vec<String>], terminal: Option<usize>) -> String {
    let names: Vec<String> = header.iter().map(|h| escape_cell(h)).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape_cell(cell)).collect())
        .collect();
    let name_width = names.iter().map(|n| n.width()).max().unwrap_or(0);
    let value_width = rows
        .iter()
        .flatten()
        .flat_map(|value| value.split('\n'))
        .map(UnicodeWidthStr::width)
        .max()
        .unwrap_or(0);
    let mut rule_width = name_width + 3 + value_width;
    if let Some(terminal) = terminal {
        rule_width = rule_width.min(terminal);
    }
    let mut out = String::new();
    for (number, row) in rows.iter().enumerate() {
        let label = format!("-[ RECORD {} ]", number + 1);
        let dashes = rule_width.saturating_sub(label.len());
        out.push_str(&label);
        out.push_str(&"-".repeat(dashes));
        out.push('\n');
        for (name, value) in names.iter().zip(row) {
            for (i, line) in value.split('\n').enumerate() {
                let name = if i == 0 { name.as_str() } else { "" };
                out.push_str(name);
                out.push_str(&" ".repeat(name_width - name.width()));
                out.push_str(" | ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn render_table(header: &[&str], rows: &[Vec<String>], terminal: bool) -> String {
    let mut table = Table::new();
    if terminal {
        table
            .load_preset(presets::UTF8_FULL_CONDENSED)
            .apply_modifier(comfy_table::modifiers::UTF8_ROUND_CORNERS)
            .set_content_arrangement(ContentArrangement::Dynamic);
    } else {
        table
            .load_preset(presets::ASCII_MARKDOWN)
            .set_content_arrangement(ContentArrangement::Disabled);
    }
    table.set_header(header.iter().map(|h| escape_cell(h)));
    for row in rows {
        table.add_row(row.iter().map(|cell| escape_cell(cell)));
    }
    table.to_string()
}

/// The JSON keys for a result's columns, in column order and all distinct.
///
/// A name that occurs once keeps it. The first column of a repeated name keeps the name, and
/// each later one gets `name_2`, `name_3`, ...: the smallest suffix that is neither a real
/// column name of this result nor a key already given, so a generated key never shadows a
/// real column (`a, a, a_2` → `a`, `a_3`, `a_2`).
pub fn json_keys(columns: &[String]) -> Vec<String> {
    let real: std::collections::HashSet<&str> = columns.iter().map(String::as_str).collect();
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    columns
        .iter()
        .map(|name| {
            if taken.insert(name.clone()) {
                return name.clone();
            }
            let mut n = 2;
            loop {
                let key = format!("{name}_{n}");
                if !real.contains(key.as_str()) && taken.insert(key.clone()) {
                    return key;
                }
                n += 1;
            }
        })
        .collect()
}

/// One row as a JSON object, keys in column order.
struct JsonRow<'a>(&'a [String], &'a [JsonCell<'a>]);

impl Serialize for JsonRow<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, cell) in self.0.iter().zip(self.1) {
            map.serialize_entry(key, cell)?;
        }
        map.end()
    }
}

/// One value of a row: numbers and json are the server's own text, never re-encoded.
#[derive(Debug)]
enum JsonCell<'a> {
    Null,
    Bool(bool),
    Text(&'a str),
    Raw(Box<RawValue>),
}

impl Serialize for JsonCell<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            JsonCell::Null => serializer.serialize_unit(),
            JsonCell::Bool(b) => serializer.serialize_bool(*b),
            JsonCell::Text(text) => serializer.serialize_str(text),
            JsonCell::Raw(raw) => raw.serialize(serializer),
        }
    }
}

fn json_cell(kind: JsonKind, text: Option<&str>) -> JsonCell<'_> {
    let Some(text) = text else {
        return JsonCell::Null;
    };
    match kind {
        JsonKind::Bool => match text {
            "t" | "true" => JsonCell::Bool(true),
            "f" | "false" => JsonCell::Bool(false),
            _ => JsonCell::Text(text),
        },
        // Integers, numeric and floats: the server's digits, when they are a JSON number
        // (NaN and ±Infinity are not, and stay strings).
        JsonKind::Number | JsonKind::Float => {
            let number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
            match RawValue::from_string(text.to_string()) {
                Ok(raw) if number => JsonCell::Raw(raw),
                _ => JsonCell::Text(text),
            }
        }
        // The text of valid JSON has line breaks only between tokens (inside a string they
        // would be escaped), so turning them into spaces keeps one row per line and changes
        // no value.
        JsonKind::Json => match RawValue::from_string(text.replace(['\n', '\r'], " ")) {
            Ok(raw) => JsonCell::Raw(raw),
            Err(_) => JsonCell::Text(text),
        },
        JsonKind::Text => JsonCell::Text(text),
    }
}

/// Escapes, for a terminal, the control characters JSON lets through raw: DEL and C1
/// (`\u{9b}` is CSI to some terminals) become `\u007f`, `\u009b`, the same string to a
/// parser. serde_json already escapes the C0 controls, and outside strings JSON text has only
/// whitespace, which stays.
fn escape_json_control(line: &str) -> String {
    let raw = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    if !line.chars().any(raw) {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len() + 12);
    for c in line.chars() {
        if raw(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Escapes tabs, newlines and backslashes for TSV.
pub fn escape_tsv(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Makes control characters visible (`\x1b`, `\u{9b}`) so database text cannot drive the
/// terminal. Newlines and tabs are kept.
pub fn escape_control(text: &str) -> String {
    escape_if(text, is_dangerous)
}

/// Escapes a table cell as [`escape_control`] does, tabs included (`\x09`): a tab would
/// break the table's columns. Newlines are kept, as lines of the cell.
fn escape_cell(text: &str) -> String {
    escape_if(text, |c| c.is_control() && c != '\n')
}

fn escape_if(text: &str, escaped: impl Fn(char) -> bool) -> String {
    if !text.chars().any(&escaped) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            if (c as u32) < 0x80 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_dangerous(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// A duration for JSON: milliseconds rounded to three decimals (whole microseconds), so the
/// number prints without float noise (`112.718`, not `112.71817100000001`). Keys that carry
/// one end in `_ms`.
pub fn json_millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Formats a duration in milliseconds with one decimal, for tables.
pub fn millis(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The pool statistics in one line, for stderr after a command (`pool gen 1: 2 open, 1
/// closed, 0.4 ms waited`, and gets that timed out if any); [`stats_rows`] has every counter.
pub fn stats_line(stats: &crate::pool::PoolStats) -> String {
    let s = stats;
    let closed = s.closed_lifetime + s.closed_idle + s.closed_broken + s.closed_retired;
    let mut line = format!(
        "pool gen {}: {} open, {closed} closed, {:.1} ms waited",
        s.generation, s.total, s.wait_ms
    );
    if s.timeouts > 0 {
        line.push_str(&format!(", {} gets timed out", s.timeouts));
    }
    line
}

/// The pool statistics as a two-column table body.
pub fn stats_rows(stats: &crate::pool::PoolStats) -> Vec<Vec<String>> {
    let s = stats;
    [
        ("generation", s.generation.to_string()),
        (
            "connections (idle / in use)",
            format!("{} ({} / {})", s.total, s.idle, s.in_use),
        ),
        ("opened", s.opened.to_string()),
        (
            "closed: lifetime / idle / broken / retired",
            format!(
                "{} / {} / {} / {}",
                s.closed_lifetime, s.closed_idle, s.closed_broken, s.closed_retired
            ),
        ),
        (
            "gets (waited, timed out)",
            format!("{} ({}, {})", s.gets, s.waits, s.timeouts),
        ),
        ("wait time", format!("{:.1} ms", s.wait_ms)),
    ]
    .into_iter()
    .map(|(k, v)| vec![k.to_string(), v])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_made_visible() {
        assert_eq!(escape_control("a\x1b[31mb"), "a\\x1b[31mb");
        assert_eq!(escape_control("line\nnext\tcol"), "line\nnext\tcol");
        assert_eq!(escape_control("\u{9b}x"), "\\u{9b}x");
        assert_eq!(escape_cell("a\tb\nc\x1bd\u{9b}"), "a\\x09b\nc\\x1bd\\u{9b}");
    }

    #[test]
    fn json_durations_are_rounded_milliseconds() {
        let d = std::time::Duration::from_nanos(112_718_171);
        assert_eq!(serde_json::to_string(&json_millis(d)).unwrap(), "112.718");
        let d = std::time::Duration::from_nanos(1_500);
        assert_eq!(serde_json::to_string(&json_millis(d)).unwrap(), "0.002");
    }

    #[test]
    fn expanded_records_follow_psql() {
        let rows = vec![
            vec![
                "1".to_string(),
                "x".repeat(10),
                "one\ntwo".to_string(),
                String::new(),
            ],
            vec![
                "2".to_string(),
                "x".repeat(20),
                "a\tb".to_string(),
                "é".to_string(),
            ],
        ];
        let header = ["n", "longer_name", "m", "z"];
        assert_eq!(
            render_expanded(&header, &rows, None),
            concat!(
                "-[ RECORD 1 ]---------------------\n",
                "n           | 1\n",
                "longer_name | xxxxxxxxxx\n",
                "m           | one\n",
                "            | two\n",
                "z           | \n",
                "-[ RECORD 2 ]---------------------\n",
                "n           | 2\n",
                "longer_name | xxxxxxxxxxxxxxxxxxxx\n",
                "m           | a\\x09b\n",
                "z           | é\n",
            )
        );
        // The rule never outgrows the terminal, nor loses its label.
        let out = render_expanded(&header, &rows, Some(20));
        assert!(out.starts_with("-[ RECORD 1 ]-------\n"), "{out}");
        let out = render_expanded(&["n"], &[vec!["1".into()]], Some(5));
        assert_eq!(out, "-[ RECORD 1 ]\nn | 1\n");
        // The boxed width is the drawn one: "│ ab │ défg │".
        let (header, rows) = (["ab", "c"], [vec!["1".to_string(), "défg".to_string()]]);
        assert_eq!(boxed_width(&header, &rows), 13);
        let drawn = render_table(&header, &rows, true);
        assert_eq!(drawn.lines().next().unwrap().chars().count(), 13, "{drawn}");
    }

    #[test]
    fn json_for_a_terminal_escapes_what_serde_json_lets_through() {
        let keys = json_keys(&["s".to_string(), "j".to_string()]);
        let cells = [
            json_cell(JsonKind::Text, Some("a\x1b[31m\u{9b}2J\x7f\tb")),
            json_cell(JsonKind::Json, Some("{\"k\":\t\"\u{9b}\"}")),
        ];
        let line = serde_json::to_string(&JsonRow(&keys, &cells)).unwrap();
        let shown = escape_json_control(&line);
        assert_eq!(
            shown,
            "{\"s\":\"a\\u001b[31m\\u009b2J\\u007f\\tb\",\"j\":{\"k\":\t\"\\u009b\"}}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&shown).unwrap();
        let original: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, original, "the same values to a parser");
    }

    #[test]
    fn tsv_escapes_separators() {
        assert_eq!(escape_tsv("a\tb\nc\\d"), "a\\tb\\nc\\\\d");
    }

    fn json(kind: JsonKind, text: Option<&str>) -> String {
        serde_json::to_string(&json_cell(kind, text)).unwrap()
    }

    #[test]
    fn json_values_follow_column_types() {
        // Numbers keep the server's digits, whatever f64 would make of them.
        for text in [
            "42",
            "-7",
            "1.5",
            "18446744073709551617",
            "1.0000000000000000001",
            "12345678901234567890.123",
            "1e5",
        ] {
            assert_eq!(json(JsonKind::Number, Some(text)), text);
        }
        for text in ["1e+20", "1e+300", "-1.5e-07", "0.1", "-0"] {
            assert_eq!(json(JsonKind::Float, Some(text)), text);
        }
        // What JSON has no number for stays a string.
        for text in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(json(JsonKind::Number, Some(text)), format!("\"{text}\""));
            assert_eq!(json(JsonKind::Float, Some(text)), format!("\"{text}\""));
        }
        assert_eq!(json(JsonKind::Bool, Some("t")), "true");
        assert_eq!(json(JsonKind::Bool, Some("f")), "false");
        assert_eq!(json(JsonKind::Text, Some("t")), "\"t\"");
        assert_eq!(json(JsonKind::Text, Some("42")), "\"42\"");
        assert_eq!(json(JsonKind::Text, None), "null");
        assert_eq!(json(JsonKind::Number, None), "null");
    }

    #[test]
    fn json_values_are_the_servers_text() {
        // Duplicate keys, key order and every digit survive; line breaks between tokens
        // become spaces so a row stays on one line.
        assert_eq!(
            json(JsonKind::Json, Some("{\"b\":1,\"a\":2,\"b\":3}")),
            "{\"b\":1,\"a\":2,\"b\":3}"
        );
        assert_eq!(
            json(JsonKind::Json, Some("{\"n\": 18446744073709551617}")),
            "{\"n\": 18446744073709551617}"
        );
        assert_eq!(
            json(JsonKind::Json, Some(" [1,\n\t\"a\\nb\"]\r\n")),
            "[1, \t\"a\\nb\"]"
        );
        // Not JSON (it cannot come from a json column): a string, not broken output.
        assert_eq!(json(JsonKind::Json, Some("{")), "\"{\"");
    }

    #[test]
    fn json_keys_keep_every_column() {
        let keys =
            |names: &[&str]| json_keys(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        assert_eq!(keys(&["z", "y"]), ["z", "y"]);
        assert_eq!(keys(&["a", "a", "a"]), ["a", "a_2", "a_3"]);
        assert_eq!(keys(&["a", "a", "a_2"]), ["a", "a_3", "a_2"]);
        assert_eq!(keys(&["a_2", "a", "a"]), ["a_2", "a", "a_3"]);
        assert_eq!(
            keys(&["a", "a", "a_2", "a_2"]),
            ["a", "a_3", "a_2", "a_2_2"]
        );
        assert_eq!(keys(&["", ""]), ["", "_2"]);
    }

    #[test]
    fn json_rows_keep_column_order() {
        let keys = json_keys(&["z".to_string(), "y".to_string()]);
        let cells = [json_cell(JsonKind::Number, Some("3")), JsonCell::Null];
        assert_eq!(
            serde_json::to_string(&JsonRow(&keys, &cells)).unwrap(),
            "{\"z\":3,\"y\":null}"
        );
    }
}
