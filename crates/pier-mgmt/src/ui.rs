//! The web UI: hand-written HTML, CSS and JavaScript in `crates/pier-mgmt/ui/`, embedded in the
//! binary with `include_str!` (no CDN, no build step, works offline).
//!
//! The files are served without authentication, as RabbitMQ serves its UI's static files; the
//! page asks for a user name and password, keeps them in the browser tab's `sessionStorage`
//! and sends them to `/api` with HTTP basic auth on every call. Its calls carry
//! `X-Requested-With: XMLHttpRequest`, and their 401 answers go without `WWW-Authenticate`
//! (see [`no_browser_prompt`]): a challenge would make the browser pop up its own login
//! dialog (or, headless, hold the request) instead of letting the page show its form.

use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const FAVICON_SVG: &str = include_str!("../ui/favicon.svg");

/// Scripts and styles only from this server; the UI talks only to its own `/api`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// The UI's files by name under `/ui/`: content type and text.
fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "favicon.svg" => ("image/svg+xml", FAVICON_SVG),
        _ => return None,
    })
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files: always revalidate, so an upgraded broker never runs a stale UI.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn index() -> Response {
    let mut resp = file("text/html; charset=utf-8", INDEX_HTML);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn ui_file(Path(name): Path<String>) -> Response {
    match asset(&name) {
        Some((kind, body)) => file(kind, body),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn favicon() -> Response {
    file("image/svg+xml", FAVICON_SVG)
}

/// Middleware for `/api`: a script's request (`X-Requested-With: XMLHttpRequest`) gets its
/// 401 without the `WWW-Authenticate` challenge, as the UI handles logins itself.
pub(crate) async fn no_browser_prompt(req: Request, next: Next) -> Response {
    let scripted = req
        .headers()
        .get("x-requested-with")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest"));
    let mut resp = next.run(req).await;
    if scripted {
        resp.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    resp
}

/// `/`, `/index.html`, `/ui/{file}` and `/favicon.ico`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/ui/{file}", get(ui_file))
        .route("/favicon.ico", get(favicon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_references_only_embedded_files() {
        for needle in ["/ui/app.js", "/ui/app.css", "/ui/favicon.svg"] {
            assert!(INDEX_HTML.contains(needle), "index.html lacks {needle}");
            let name = needle.trim_start_matches("/ui/");
            assert!(asset(name).is_some(), "{name} is not served");
        }
        // Offline: nothing is loaded from another host.
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
