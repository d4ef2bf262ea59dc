//! A small blocking client for the management HTTP API (ureq), with the error handling
//! `pier ctl` needs: the API's `{"error", "reason"}` bodies become messages, and failures
//! carry `rabbitmqctl`'s exit codes.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// Exit codes, as `rabbitmqctl` (sysexits.h).
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_NOINPUT: i32 = 66;
pub const EX_UNAVAILABLE: i32 = 69;
pub const EX_SOFTWARE: i32 = 70;
pub const EX_CANTCREAT: i32 = 73;
pub const EX_NOPERM: i32 = 77;

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct CtlError {
    pub code: i32,
    pub message: String,
    /// The HTTP status, for API refusals.
    pub status: Option<u16>,
}

impl CtlError {
    pub fn new(code: i32, message: impl Into<String>) -> CtlError {
        CtlError {
            code,
            message: message.into(),
            status: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> CtlError {
        CtlError::new(EX_USAGE, message)
    }

    /// Whether the API answered 404.
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

pub type CtlResult<T> = Result<T, CtlError>;

/// Percent-encodes a URL path segment (`/` as `%2F`, as the API expects vhost names).
pub use pier_mgmt::encode_segment as enc;

pub struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

/// Responses larger than this are refused (a definitions export of a big broker fits).
const MAX_BODY: u64 = 1 << 30;

impl Client {
    pub fn new(url: &str, user: &str, password: &str, timeout: Duration) -> Client {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Client {
            base: url.trim_end_matches('/').to_owned(),
            auth: format!("Basic {token}"),
            agent,
        }
    }

    /// Calls `method path` (path under `/api`, already encoded) and returns the JSON body
    /// (`Value::Null` for an empty one). Non-2xx answers are errors with the API's reason.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> CtlResult<Value> {
        let url = format!("{}/api{path}", self.base);
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Authorization", &self.auth)
            .header("Accept", "application/json");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = match body {
            Some(b) => builder
                .header("Content-Type", "application/json")
                .body(b.to_string())
                .map(|r| self.agent.run(r)),
            None => builder.body(()).map(|r| self.agent.run(r)),
        };
        let response = request
            .map_err(|e| CtlError::usage(format!("invalid request URL {url}: {e}")))?
            .map_err(|e| {
                CtlError::new(
                    EX_UNAVAILABLE,
                    format!(
                        "unable to reach the management API at {}: {e}\n\
                         Is Pier running, and are --url (or PIER_CTL_URL) and --http-port right?",
                        self.base
                    ),
                )
            })?;
        let status = response.status().as_u16();
        let text = response
            .into_body()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| CtlError::new(EX_SOFTWARE, format!("reading the answer: {e}")))?;
        let json: Option<Value> = if text.trim().is_empty() {
            None
        } else {
            serde_json::from_str(&text).ok()
        };
        if (200..300).contains(&status) {
            return match (json, text.trim().is_empty()) {
                (Some(v), _) => Ok(v),
                (None, true) => Ok(Value::Null),
                (None, false) => Err(CtlError::new(
                    EX_SOFTWARE,
                    format!("{method} {path}: the answer is not JSON"),
                )),
            };
        }
        let reason = json
            .as_ref()
            .and_then(|v| v.get("reason"))
            .map(|r| match r {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| match status {
                401 => "not authorised: wrong user name or password".to_owned(),
                404 => "not found".to_owned(),
                _ => format!("HTTP {status}"),
            });
        let code = match status {
            401 | 403 => EX_NOPERM,
            400 => EX_DATAERR,
            _ => EX_SOFTWARE,
        };
        Err(CtlError {
            code,
            message: reason,
            status: Some(status),
        })
    }

    pub fn get(&self, path: &str) -> CtlResult<Value> {
        self.call("GET", path, None, &[])
    }

    pub fn put(&self, path: &str, body: &Value) -> CtlResult<Value> {
        self.call("PUT", path, Some(body), &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> CtlResult<Value> {
        self.call("POST", path, Some(body), &[])
    }

    pub fn delete(&self, path: &str) -> CtlResult<Value> {
        self.call("DELETE", path, None, &[])
    }

    /// GET of a list: the array (a paged answer's `items`).
    pub fn list(&self, path: &str) -> CtlResult<Vec<Value>> {
        match self.get(path)? {
            Value::Array(items) => Ok(items),
            Value::Object(mut m) => match m.remove("items") {
                Some(Value::Array(items)) => Ok(items),
                _ => Err(CtlError::new(
                    EX_SOFTWARE,
                    format!("GET {path}: expected a list"),
                )),
            },
            _ => Err(CtlError::new(
                EX_SOFTWARE,
                format!("GET {path}: expected a list"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(enc("/"), "%2F");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(enc("q.name-1_x~"), "q.name-1_x~");
    }
}
