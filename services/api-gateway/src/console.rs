//! The operator console: a page at `/` and its assets under `/console/`, plain HTML, CSS
//! and JavaScript modules from `services/api-gateway/console/`, embedded in the binary
//! when it is compiled. No build step, nothing fetched from elsewhere: the page talks to
//! this gateway's `/api/v1` and nothing else, which its Content-Security-Policy enforces.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

/// One embedded file: its name under `/console/`, its bytes and its media type.
struct Asset {
    name: &'static str,
    body: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $name)),
            content_type: $content_type,
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every file the console is made of. A file added to the directory is served once it
/// is listed here.
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("live.js", JS),
    asset!("pages.js", JS),
    asset!("agent.js", JS),
    asset!("admin.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// Only this origin, for everything; no inline script or style, no framing, no plugins.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// The routes of the console: `/` and `/console/{file}`.
pub(crate) fn routes() -> Router {
    Router::new().route("/", get(index)).route("/console/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(find("index.html").expect("index.html is embedded"), &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match find(&file) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::NotFound(format!("the console has no file {file:?}")).into_response(),
    }
}

fn find(name: &str) -> Option<(usize, &'static Asset)> {
    ASSETS.iter().enumerate().find(|(_, a)| a.name == name)
}

/// A strong validator per file: the hash of its bytes, computed once.
fn etag(index: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS.iter().map(|a| format!("\"{}\"", &wire_models::sha256_hex(a.body)[..32])).collect()
    });
    &tags[index]
}

/// The file with its security headers. The names carry no version, so the browser keeps
/// a copy but asks (`If-None-Match`) before using it: a new gateway's console shows at
/// once, an unchanged one costs a 304.
fn serve((index, asset): (usize, &'static Asset), request: &HeaderMap) -> Response {
    let etag = etag(index);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("a hex etag is a valid header"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_console_is_embedded_once() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
            assert!(ASSETS[..i].iter().all(|b| b.name != a.name), "{} is listed twice", a.name);
        }
        // A file in the directory that is not listed would be missing from the binary.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/console");
        for entry in std::fs::read_dir(dir).expect("the console directory") {
            let name = entry.expect("a directory entry").file_name();
            let name = name.to_string_lossy();
            assert!(find(&name).is_some(), "console/{name} is not in ASSETS");
        }
        assert_eq!(find("index.html").map(|(_, a)| a.content_type), Some(HTML));
        assert_eq!(find("app.js").map(|(_, a)| a.content_type), Some(JS));
    }
}
