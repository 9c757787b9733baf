//! Everything printed: tables, csv, tsv and json, terminal detection and escaping.
//!
//! Whether stdout and stderr are terminals is decided once, in [`Output::new`]. Tables are
//! boxed on a terminal and a stable plain layout when piped; control characters from the
//! database are escaped before they reach a terminal. Output knows nothing about tokens.

use std::io::{self, IsTerminal, Write};

use comfy_table::{ContentArrangement, Table, presets};
use serde_json::{Map, Value};

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
    stdout_tty: bool,
    stderr_tty: bool,
}

impl Output {
    /// Decides, once, what stdout and stderr are.
    pub fn new(global: &GlobalArgs) -> Output {
        Output {
            format: global.format,
            no_header: global.no_header,
            quiet: global.quiet,
            verbose: global.verbose,
            stdout_tty: io::stdout().is_terminal(),
            stderr_tty: io::stderr().is_terminal(),
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

    /// Renders a table for stdout (boxed on a terminal, plain when piped).
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) -> String {
        render_table(header, rows, self.stdout_tty)
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
            Format::Table => {
                if result.returned_rows {
                    let header: Vec<&str> = result.columns.iter().map(String::as_str).collect();
                    let rows: Vec<Vec<String>> = result
                        .rows
                        .iter()
                        .map(|row| row.iter().map(|v| v.clone().unwrap_or_default()).collect())
                        .collect();
                    writeln!(out, "{}", self.table(&header, &rows))?;
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
                for row in &result.rows {
                    let mut object = Map::new();
                    for ((name, kind), value) in result.columns.iter().zip(&result.kinds).zip(row) {
                        object.insert(name.clone(), json_value(*kind, value.as_deref()));
                    }
                    serde_json::to_writer(&mut *out, &Value::Object(object))?;
                    writeln!(out)?;
                }
            }
        }
        Ok(())
    }

    fn write_delimited(&self, out: &mut dyn Write, result: &StatementResult) -> anyhow::Result<()> {
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
    table.set_header(header.iter().map(|h| escape_control(h)));
    for row in rows {
        table.add_row(row.iter().map(|cell| escape_control(cell)));
    }
    table.to_string()
}

fn json_value(kind: JsonKind, text: Option<&str>) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    match kind {
        JsonKind::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        JsonKind::Number => {
            if let Ok(int) = text.parse::<i64>() {
                return Value::from(int);
            }
            text.parse::<f64>()
                .ok()
                .filter(|_| plain_decimal_fits(text))
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| Value::String(text.to_string()), Value::Number)
        }
        JsonKind::Float => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(text.to_string()), Value::Number),
        JsonKind::Json => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        JsonKind::Text => Value::String(text.to_string()),
    }
}

/// A decimal is emitted as a JSON number only when f64 keeps every digit of it.
fn plain_decimal_fits(text: &str) -> bool {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    digits <= 15
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
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
    if !text.chars().any(is_dangerous) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_dangerous(c) {
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

/// Formats a duration in milliseconds with one decimal, for tables.
pub fn millis(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
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
    }

    #[test]
    fn tsv_escapes_separators() {
        assert_eq!(escape_tsv("a\tb\nc\\d"), "a\\tb\\nc\\\\d");
    }

    #[test]
    fn json_values_follow_column_types() {
        assert_eq!(json_value(JsonKind::Number, Some("42")), Value::from(42));
        assert_eq!(
            json_value(JsonKind::Number, Some("1.5")),
            serde_json::json!(1.5)
        );
        assert_eq!(
            json_value(JsonKind::Number, Some("12345678901234567890.123")),
            Value::String("12345678901234567890.123".into())
        );
        assert_eq!(
            json_value(JsonKind::Number, Some("NaN")),
            Value::String("NaN".into())
        );
        // Floats are numbers whatever their exponent (the same column never mixes strings
        // in), except what JSON has no number for.
        for (text, number) in [("1e+20", 1e20), ("1e+300", 1e300), ("-1.5e-07", -1.5e-7)] {
            assert_eq!(
                json_value(JsonKind::Float, Some(text)),
                serde_json::json!(number)
            );
        }
        for text in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(
                json_value(JsonKind::Float, Some(text)),
                Value::String(text.into())
            );
        }
        assert_eq!(json_value(JsonKind::Bool, Some("t")), Value::Bool(true));
        assert_eq!(
            json_value(JsonKind::Text, Some("t")),
            Value::String("t".into())
        );
        assert_eq!(
            json_value(JsonKind::Json, Some("{\"a\":1}")),
            serde_json::json!({"a": 1})
        );
        assert_eq!(json_value(JsonKind::Text, None), Value::Null);
    }
}
