//! Output of `pier ctl`: column selection as `rabbitmqctl list_*` (info items), aligned
//! tables for people, JSON for scripts.

use std::io::Write;

use serde_json::{Map, Value};

use super::client::{CtlError, CtlResult};

/// The info items of one `list_*` command: `(item, JSON path)`. A path is a dotted path into
/// the API's object (`pier_queueing.arrival_rate`), or `=text` for a constant.
pub struct ListSpec {
    /// What is listed, for messages ("queue", "exchange", …).
    pub what: &'static str,
    pub items: &'static [(&'static str, &'static str)],
    /// The columns shown when none are asked for (as `rabbitmqctl`).
    pub default: &'static [&'static str],
}

/// One chosen column: its header and where its value comes from.
pub struct Column {
    pub name: String,
    pub path: String,
}

/// The columns for `requested` (info items, space- or comma-separated): the spec's items,
/// or any field (or dotted path) of the API's objects.
pub fn columns(spec: &ListSpec, requested: &[String], rows: &[Value]) -> CtlResult<Vec<Column>> {
    let wanted: Vec<String> = requested
        .iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let names: Vec<String> = if wanted.is_empty() {
        spec.default.iter().map(|s| (*s).to_owned()).collect()
    } else {
        wanted
    };
    let mut out = Vec::new();
    for name in names {
        let path = match spec.items.iter().find(|(item, _)| *item == name) {
            Some((_, path)) => (*path).to_owned(),
            None if rows.is_empty() || rows.iter().any(|r| lookup(r, &name).is_some()) => {
                name.clone()
            }
            None => {
                let valid: Vec<&str> = spec.items.iter().map(|(i, _)| *i).collect();
                return Err(CtlError::usage(format!(
                    "Invalid {} info item: {name}. Valid items: {} (or any field of the API's \
                     JSON, as a dotted path)",
                    spec.what,
                    valid.join(", ")
                )));
            }
        };
        out.push(Column { name, path });
    }
    Ok(out)
}

/// The value at a dotted path (`a.b.c`); the whole key is tried first, so field names that
/// contain dots still work.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(x) = v.get(path) {
        return Some(x);
    }
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn value_at(v: &Value, path: &str) -> Value {
    match path.strip_prefix('=') {
        Some(constant) => Value::from(constant),
        None => lookup(v, path).cloned().unwrap_or(Value::Null),
    }
}

/// The rows as objects keyed by column name (the JSON output).
pub fn project(rows: &[Value], cols: &[Column]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            let mut m = Map::new();
            for c in cols {
                m.insert(c.name.clone(), value_at(r, &c.path));
            }
            Value::Object(m)
        })
        .collect()
}

/// A value as a table cell: strings bare, null empty, numbers without noise, lists of
/// strings as `[a, b]` (as `rabbitmqctl` shows tags), other structures as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => {
                let s = format!("{f:.3}");
                let s = s.trim_end_matches('0').trim_end_matches('.');
                if s.is_empty() || s == "-0" {
                    "0".to_owned()
                } else {
                    s.to_owned()
                }
            }
            _ => n.to_string(),
        },
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            format!("[{}]", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces; a header row first. Cells keep their
/// text (newlines and tabs are shown escaped so a row stays a line).
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| s.replace('\n', "\\n").replace('\t', "\\t");
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            if i + 1 < cells.len() {
                let pad = widths.get(i).copied().unwrap_or(0);
                for _ in c.chars().count()..pad {
                    l.push(' ');
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers, &mut out);
    for r in &rows {
        line(r, &mut out);
    }
    out
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Writes JSON (pretty) and a newline to stdout.
pub fn emit_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    emit(&format!("{text}\n"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const SPEC: ListSpec = ListSpec {
        what: "queue",
        items: &[
            ("name", "name"),
            ("messages", "messages"),
            ("arrival_rate", "pier_queueing.arrival_rate"),
            ("kind", "=exchange"),
        ],
        default: &["name", "messages"],
    };

    #[test]
    fn columns_defaults_items_and_paths() {
        let rows = vec![
            json!({"name": "q", "messages": 3, "pier_queueing": {"arrival_rate": 1.5},
                                "durable": true}),
        ];
        let names = |cols: Vec<Column>| cols.into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(
            names(columns(&SPEC, &[], &rows).unwrap()),
            vec!["name", "messages"]
        );
        let cols = columns(
            &SPEC,
            &["name,arrival_rate".into(), "durable".into()],
            &rows,
        )
        .unwrap();
        assert_eq!(
            project(&rows, &cols),
            vec![json!({"name": "q", "arrival_rate": 1.5, "durable": true})]
        );
        let cols = columns(&SPEC, &["kind".into()], &rows).unwrap();
        assert_eq!(project(&rows, &cols), vec![json!({"kind": "exchange"})]);
        let e = columns(&SPEC, &["bogus".into()], &rows).err().unwrap();
        assert!(e.message.contains("Invalid queue info item: bogus"));
    }

    #[test]
    fn cells_and_tables() {
        assert_eq!(cell(&json!(null)), "");
        assert_eq!(cell(&json!(2.5)), "2.5");
        assert_eq!(cell(&json!(0.0)), "0");
        assert_eq!(cell(&json!(["administrator", "x"])), "[administrator, x]");
        assert_eq!(cell(&json!({"a": 1})), "{\"a\":1}");
        let t = table(
            &["name".into(), "messages".into()],
            &[
                vec!["a-long-name".into(), "1".into()],
                vec!["b".into(), "".into()],
            ],
        );
        assert_eq!(t, "name         messages\na-long-name  1\nb\n");
    }
}
