//! The compiled-in page: `index.html` at `/` with its Content-Security-Policy,
//! and every other file under `assets/` at its own path (`/style.css`,
//! `/js/main.js`, ...) with its content type and `Cache-Control: no-cache`.
//!
//! The files are embedded by `rust-embed` (with `debug-embed`, so a debug
//! build and the tests serve exactly the bytes a release build serves). The
//! routes are made from that one list, so they cannot drift from the folder.
//! A file added to `assets/` is embedded at the next build of this module
//! (`touch src/http/page.rs` if cargo does not notice a new file).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// The page served at `/`; not served under its own name, so the page has
/// one address and always comes with its policy.
const INDEX: &str = "index.html";

/// The page may only talk to this server and run its own scripts (`'self'`
/// covers its ES modules), so even a rendering bug cannot load or run
/// anything from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/` and one GET route per embedded file; any other path falls through to
/// the caller's fallback (the JSON 404).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for path in Assets::iter() {
        let Some(file) = Assets::get(&path) else {
            continue;
        };
        let body = file.data;
        let kind = content_type(&path);
        let route = if path == INDEX {
            "/".to_string()
        } else {
            format!("/{path}")
        };
        let csp = kind.starts_with("text/html");
        router = router.route(
            &route,
            get(move || {
                let body = body.clone();
                async move { asset(kind, csp, body) }
            }),
        );
    }
    router
}

/// Assets change with the binary, so browsers revalidate instead of caching
/// an old page against a new server.
fn asset(content_type: &'static str, csp: bool, body: std::borrow::Cow<'static, [u8]>) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    if csp {
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}
