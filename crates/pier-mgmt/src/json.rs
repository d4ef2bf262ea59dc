//! JSON helpers: AMQP field tables and message properties to and from JSON (as RabbitMQ's
//! management plugin converts them), request bodies, and RabbitMQ's list query parameters
//! (`columns=`, `sort=`, `page=`…).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use pier_broker::message::Properties;
use pier_wire::{FieldTable, FieldValue, LongString, ShortString};
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::error::{ApiError, ApiResult};
use crate::views::{self, Page};

/// A JSON 200 response with a view (see [`crate::views`]), serialized through
/// `serde_json::Value` so that object keys come out sorted.
pub fn ok<T: Serialize + ?Sized>(v: &T) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        views::to_value(v).to_string(),
    )
        .into_response()
}

/// A JSON response with another status (a failed health check's 503, for instance).
pub fn with_status<T: Serialize + ?Sized>(status: StatusCode, v: &T) -> Response {
    let mut r = ok(v);
    *r.status_mut() = status;
    r
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// 201 for a created object, 204 for an updated one (RabbitMQ's PUT answers).
pub fn created_or_updated(created: bool) -> Response {
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// Parses a request body as a JSON object. An empty body is an empty object (RabbitMQ accepts
/// a PUT without body); anything else that is not a JSON object is `not_json`.
pub fn body_object(body: &Bytes) -> ApiResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::bad_request("not_json")),
    }
}

/// A boolean field (absent: `default`); RabbitMQ also accepts "true"/"false" strings.
pub fn get_bool(m: &Map<String, Value>, key: &str, default: bool) -> ApiResult<bool> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(ApiError::bad_request(Value::Array(vec![
            Value::from("not_boolean"),
            other.clone(),
        ]))),
    }
}

pub fn get_str<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// `arguments`: an object (absent, null or "" means none).
pub fn get_table(m: &Map<String, Value>, key: &str) -> ApiResult<FieldTable> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(FieldTable::new()),
        Some(Value::Object(o)) => object_to_table(o),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be an object"))),
    }
}

/// A name from a URL or body, checked to fit an AMQP `shortstr`.
pub fn short(s: &str) -> ApiResult<ShortString> {
    ShortString::try_from_string(s.to_owned())
        .map_err(|_| ApiError::bad_request(format!("name too long: '{s}'")))
}

// ---- field tables ----

pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

pub fn value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::ShortShortInt(n) => Value::from(*n),
        FieldValue::ShortShortUInt(n) => Value::from(*n),
        FieldValue::ShortInt(n) => Value::from(*n),
        FieldValue::ShortUInt(n) => Value::from(*n),
        FieldValue::LongInt(n) => Value::from(*n),
        FieldValue::LongUInt(n) => Value::from(*n),
        FieldValue::LongLongInt(n) => Value::from(*n),
        FieldValue::LongLongUInt(n) => Value::from(*n),
        FieldValue::Float(f) => float(f64::from(*f)),
        FieldValue::Double(f) => float(*f),
        FieldValue::Decimal { scale, value } => {
            float(f64::from(*value) / 10f64.powi(i32::from(*scale)))
        }
        FieldValue::LongString(s) => Value::String(s.to_str_lossy().into_owned()),
        FieldValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        FieldValue::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => Value::from(*t),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

pub fn object_to_table(o: &Map<String, Value>) -> ApiResult<FieldTable> {
    let mut t = FieldTable::new();
    for (k, v) in o {
        t.insert(short(k)?, json_to_value(v)?);
    }
    Ok(t)
}

/// JSON to an AMQP value the way RabbitMQ's management plugin types it: integers are `long`,
/// other numbers `double`, strings `longstr`.
pub fn json_to_value(v: &Value) -> ApiResult<FieldValue> {
    Ok(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                FieldValue::LongLongInt(i)
            } else if let Some(u) = n.as_u64() {
                FieldValue::LongLongUInt(u)
            } else {
                FieldValue::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => FieldValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            FieldValue::Array(items.iter().map(json_to_value).collect::<ApiResult<_>>()?)
        }
        Value::Object(o) => FieldValue::Table(object_to_table(o)?),
    })
}

// ---- message properties ----

pub fn properties_to_json(p: &Properties) -> Value {
    let mut m = Map::new();
    let mut s = |k: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), Value::String(v.as_str().to_owned()));
        }
    };
    s("content_type", &p.content_type);
    s("content_encoding", &p.content_encoding);
    s("correlation_id", &p.correlation_id);
    s("reply_to", &p.reply_to);
    s("expiration", &p.expiration);
    s("message_id", &p.message_id);
    s("type", &p.kind);
    s("user_id", &p.user_id);
    s("app_id", &p.app_id);
    s("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        m.insert("headers".into(), table_to_json(h));
    }
    if let Some(d) = p.delivery_mode {
        m.insert("delivery_mode".into(), Value::from(d));
    }
    if let Some(pr) = p.priority {
        m.insert("priority".into(), Value::from(pr));
    }
    if let Some(t) = p.timestamp {
        m.insert("timestamp".into(), Value::from(t));
    }
    Value::Object(m)
}

pub fn json_to_properties(v: Option<&Value>) -> ApiResult<Properties> {
    let mut p = Properties::default();
    let o = match v {
        None | Some(Value::Null) => return Ok(p),
        Some(Value::Array(a)) if a.is_empty() => return Ok(p),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::bad_request("properties must be an object")),
    };
    for (k, v) in o {
        let text = || -> ApiResult<ShortString> {
            match v {
                Value::String(s) => short(s),
                other => short(&other.to_string()),
            }
        };
        let small = |max: u64| -> ApiResult<u8> {
            v.as_u64()
                .filter(|n| *n <= max)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| ApiError::bad_request(format!("invalid value for property {k}")))
        };
        match k.as_str() {
            "content_type" => p.content_type = Some(text()?),
            "content_encoding" => p.content_encoding = Some(text()?),
            "correlation_id" => p.correlation_id = Some(text()?),
            "reply_to" => p.reply_to = Some(text()?),
            "expiration" => p.expiration = Some(text()?),
            "message_id" => p.message_id = Some(text()?),
            "type" => p.kind = Some(text()?),
            "user_id" => p.user_id = Some(text()?),
            "app_id" => p.app_id = Some(text()?),
            "cluster_id" => p.cluster_id = Some(text()?),
            "delivery_mode" => p.delivery_mode = Some(small(2)?),
            "priority" => p.priority = Some(small(255)?),
            "timestamp" => {
                p.timestamp =
                    Some(v.as_u64().ok_or_else(|| {
                        ApiError::bad_request("invalid value for property timestamp")
                    })?)
            }
            "headers" => match v {
                Value::Object(h) => p.headers = Some(object_to_table(h)?),
                Value::Null => {}
                _ => return Err(ApiError::bad_request("headers must be an object")),
            },
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown message property '{other}'"
                )))
            }
        }
    }
    Ok(p)
}

// ---- binding property keys ----

/// RabbitMQ's `quote_plus`: letters, digits and `-_.` stay, space becomes `+`, everything
/// else is percent-encoded (and `~`, the separator, always is).
pub fn quote_plus(s: &str) -> String {
    // Spaces pass the set unescaped, so every space left in the output is the input's.
    const QUOTE_PLUS: &percent_encoding::AsciiSet = &crate::PATH_SEGMENT.add(b'~').remove(b' ');
    percent_encoding::utf8_percent_encode(s, QUOTE_PLUS)
        .to_string()
        .replace(' ', "+")
}

/// The `properties_key` of a binding: `~` for an empty key without arguments, the quoted key
/// without arguments, `key~hash` with (the hash is Pier's own, stable within a run).
pub fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    if arguments.is_empty() {
        if routing_key.is_empty() {
            return "~".to_owned();
        }
        return quote_plus(routing_key);
    }
    // FNV-1a over the JSON rendering of the arguments (keys sorted by the table).
    let text = table_to_json(arguments).to_string();
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    use base64::Engine;
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.to_be_bytes());
    format!("{}~{}", quote_plus(routing_key), quote_plus(&hash))
}

// ---- list parameters ----

/// Applies RabbitMQ's list query parameters to a list: `name=` (case-insensitive substring,
/// or with `use_regex=true` a case-insensitive regular expression), `sort=` and
/// `sort_reverse=`, `page=`/`page_size=` (answered in RabbitMQ's paged shape, with its errors),
/// `columns=` (dotted paths keep just that part of a nested object). RabbitMQ filters by name
/// only when paging; Pier filters in both cases.
pub fn list(mut items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult<Response> {
    let total = items.len();
    if let Some(name) = q.get("name").filter(|n| !n.is_empty()) {
        let matches = name_filter(name, q.get("use_regex").is_some_and(|v| v == "true"))?;
        items.retain(|v| v.get("name").and_then(Value::as_str).is_some_and(&matches));
    }
    if let Some(key) = q.get("sort").filter(|s| !s.is_empty()) {
        items.sort_by(|a, b| compare(lookup(a, key), lookup(b, key)));
    }
    if q.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
    let columns: Option<Vec<Vec<&str>>> = q.get("columns").filter(|c| !c.is_empty()).map(|c| {
        c.split(',')
            .map(|p| p.trim().split('.').collect())
            .collect()
    });
    let project = |v: Value| -> Value {
        match &columns {
            Some(cols) => {
                let mut out = Value::Object(Map::new());
                for path in cols {
                    copy_path(&v, &mut out, path);
                }
                out
            }
            None => v,
        }
    };
    let Some(page) = q.get("page") else {
        return Ok(ok(&items.into_iter().map(project).collect::<Vec<_>>()));
    };
    let invalid = || ApiError::bad_request("Pagination parameters are invalid");
    let page: u64 = page.parse().map_err(|_| invalid())?;
    let page_size: u64 = match q.get("page_size") {
        None => 100,
        Some(s) => s.parse().map_err(|_| invalid())?,
    };
    if page == 0 || page_size == 0 || page_size > 500 {
        let size = q.get("page_size").map_or("undefined", String::as_str);
        return Err(ApiError::with_error(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_pagination_parameters",
            format!("Invalid pagination parameters: page number {page}, page size {size}"),
        ));
    }
    let filtered = items.len() as u64;
    let page_count = filtered.div_ceil(page_size);
    // As RabbitMQ: page 1 of an empty list is fine, any page past the last is an error.
    if page > page_count.max(1) {
        return Err(ApiError::with_error(
            axum::http::StatusCode::BAD_REQUEST,
            "page_out_of_range",
            format!("Page out of range, page: {page} page size: {page_size}, len: {filtered}"),
        ));
    }
    let skip = usize::try_from((page - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let take = usize::try_from(page_size).unwrap_or(usize::MAX);
    let selected: Vec<Value> = items
        .into_iter()
        .skip(skip)
        .take(take)
        .map(project)
        .collect();
    Ok(ok(&Page {
        filtered_count: filtered,
        item_count: selected.len(),
        items: selected,
        page,
        page_count,
        page_size,
        total_count: total,
    }))
}

/// The `name=` filter: case-insensitive, as RabbitMQ's.
fn name_filter(name: &str, use_regex: bool) -> ApiResult<impl Fn(&str) -> bool> {
    let pattern = if use_regex {
        name.to_owned()
    } else {
        regex::escape(name)
    };
    let re = regex::RegexBuilder::new(&pattern)
        .case_insensitive(true)
        .build()
        .map_err(|_| ApiError::bad_request("Pagination parameters are invalid"))?;
    Ok(move |s: &str| re.is_match(s))
}

/// Copies the value at `path` in `from` to the same place in `to` (missing: nothing).
fn copy_path(from: &Value, to: &mut Value, path: &[&str]) {
    let (Some((first, rest)), Value::Object(out)) = (path.split_first(), to) else {
        return;
    };
    let Some(x) = from.get(*first) else {
        return;
    };
    if rest.is_empty() || !x.is_object() {
        out.insert((*first).to_owned(), x.clone());
        return;
    }
    let slot = out
        .entry((*first).to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    copy_path(x, slot, rest);
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn properties_keys_match_rabbitmq() {
        assert_eq!(properties_key("", &FieldTable::new()), "~");
        assert_eq!(properties_key("order.*", &FieldTable::new()), "order.%2A");
        assert_eq!(properties_key("a.b c", &FieldTable::new()), "a.b+c");
        assert_eq!(quote_plus("a+b~c/é"), "a%2Bb%7Ec%2F%C3%A9");
        let mut t = FieldTable::new();
        t.insert("x", FieldValue::from("y"));
        let k = properties_key("limited", &t);
        assert!(k.starts_with("limited~"), "{k}");
        assert_eq!(k, properties_key("limited", &t));
    }

    fn listed(items: Value, query: &[(&str, &str)]) -> (u16, Value) {
        let q = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let items = items.as_array().unwrap().clone();
        let r = match list(items, &q) {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        let status = r.status().as_u16();
        let body = futures_body(r);
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn futures_body(r: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec()
        })
    }

    #[test]
    fn list_parameters_as_rabbitmq() {
        let items = serde_json::json!([
            {"name": "Alpha", "n": 3, "s": {"a": 1, "b": 2}},
            {"name": "beta", "n": 1, "s": {"a": 5}},
            {"name": "gamma", "n": 2},
        ]);
        // Case-insensitive substring; regex with use_regex.
        let (_, v) = listed(items.clone(), &[("name", "ALPH"), ("columns", "name")]);
        assert_eq!(v, serde_json::json!([{"name": "Alpha"}]));
        let (_, v) = listed(
            items.clone(),
            &[
                ("name", "^(beta|gamma)$"),
                ("use_regex", "true"),
                ("columns", "name"),
            ],
        );
        assert_eq!(v, serde_json::json!([{"name": "beta"}, {"name": "gamma"}]));
        let (_, v) = listed(items.clone(), &[("name", "a.p"), ("columns", "name")]);
        assert_eq!(v, serde_json::json!([]));
        // Nested columns keep just the path.
        let (_, v) = listed(items.clone(), &[("columns", "name,s.a"), ("sort", "n")]);
        assert_eq!(
            v,
            serde_json::json!([{"name": "beta", "s": {"a": 5}}, {"name": "gamma"}, {"name": "Alpha", "s": {"a": 1}}])
        );
        // Paging and its errors.
        let (s, v) = listed(
            items.clone(),
            &[("page", "2"), ("page_size", "2"), ("columns", "name")],
        );
        assert_eq!(s, 200);
        assert_eq!(v["items"], serde_json::json!([{"name": "gamma"}]));
        assert_eq!(v["page_count"], 2);
        assert_eq!(v["total_count"], 3);
        let (s, v) = listed(items.clone(), &[("page", "3"), ("page_size", "2")]);
        assert_eq!(
            (s, v["error"].clone()),
            (400, serde_json::json!("page_out_of_range"))
        );
        let (s, v) = listed(items.clone(), &[("page", "1"), ("page_size", "600")]);
        assert_eq!(
            (s, v["error"].clone()),
            (400, serde_json::json!("invalid_pagination_parameters"))
        );
        let (s, v) = listed(items.clone(), &[("page", "x")]);
        assert_eq!(
            (s, v["reason"].clone()),
            (400, serde_json::json!("Pagination parameters are invalid"))
        );
        let (s, v) = listed(items, &[("page", "1"), ("name", "zzz")]);
        assert_eq!(
            (s, v["page_count"].clone(), v["item_count"].clone()),
            (200, serde_json::json!(0), serde_json::json!(0))
        );
    }

    #[test]
    fn tables_round_trip() {
        let v: Value = serde_json::json!({"a": 1, "b": "s", "c": [true, 2.5], "d": {"e": null}});
        let t = object_to_table(v.as_object().unwrap()).unwrap();
        assert_eq!(table_to_json(&t), v);
    }

    #[test]
    fn properties_round_trip() {
        let v = serde_json::json!({"delivery_mode": 2, "headers": {"h": "v"}, "content_type": "text/plain", "priority": 3});
        let p = json_to_properties(Some(&v)).unwrap();
        assert_eq!(properties_to_json(&p), v);
        assert!(json_to_properties(Some(&serde_json::json!({"bogus": 1}))).is_err());
        assert!(json_to_properties(Some(&serde_json::json!({"delivery_mode": 7}))).is_err());
    }
}
