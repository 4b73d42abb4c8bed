//! The web console: a few static files (HTML, CSS, JavaScript modules)
//! built into the binary and served at `/console`. No build step, no data:
//! the page asks for an API key, keeps it in the tab's `sessionStorage`, and
//! reads everything it shows from the API with that key — an operator key
//! gets the platform view, a tenant key its own tenant's.
//!
//! Invariants: the routes are public because the files hold nothing of
//! anyone's; every response carries a Content-Security-Policy that allows
//! scripts, styles and connections to this origin only (no inline script,
//! no `eval`, no framing), with `nosniff` and `no-referrer`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bulkhead_core::Code;

use crate::ApiError;

/// `(name, content type, bytes)` of every file under `/console/`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("index.html", "text/html; charset=utf-8", include_bytes!("../console/index.html")),
    ("console.css", "text/css; charset=utf-8", include_bytes!("../console/console.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../console/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_bytes!("../console/api.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_bytes!("../console/dom.js")),
    ("money.js", "text/javascript; charset=utf-8", include_bytes!("../console/money.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_bytes!("../console/charts.js")),
    ("operator.js", "text/javascript; charset=utf-8", include_bytes!("../console/operator.js")),
    ("tenant.js", "text/javascript; charset=utf-8", include_bytes!("../console/tenant.js")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../console/favicon.svg")),
];

/// Scripts, styles, images and API calls from this origin only; nothing
/// inline, no plugins, no framing, forms post nowhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=()"),
    // The files change with the binary: revalidate rather than guess.
    ("cache-control", "no-cache"),
];

/// `/console` (and `/console/`) is the page; `/console/{file}` its parts.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{file}", get(asset))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(name: &str) -> Response {
    let mut response = match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, *content_type)], *bytes).into_response()
        }
        None => ApiError::new(Code::NotFound, "no such console file").into_response(),
    };
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    async fn get(path: &str) -> Response {
        routes::<()>().oneshot(Request::builder().uri(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn every_file_is_served_with_its_type_and_the_security_headers() {
        for (name, content_type, bytes) in ASSETS {
            let res = get(&format!("/console/{name}")).await;
            assert_eq!(res.status(), StatusCode::OK, "{name}");
            assert_eq!(res.headers()[header::CONTENT_TYPE], *content_type, "{name}");
            assert_eq!(res.headers()["content-security-policy"], CONTENT_SECURITY_POLICY);
            assert_eq!(res.headers()["x-content-type-options"], "nosniff");
            let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
            assert_eq!(&body[..], *bytes, "{name}");
        }
        for path in ["/console", "/console/"] {
            let res = get(path).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert!(res.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        }
        let res = get("/console/secrets.txt").await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()["content-security-policy"], CONTENT_SECURITY_POLICY);
    }

    /// The policy forbids inline script and style, so the page must not need
    /// them: no `<script>` without `src`, no `style=` or `on…=` attributes,
    /// and no module that writes HTML from strings.
    #[test]
    fn the_files_need_nothing_inline() {
        let html = std::str::from_utf8(ASSETS[0].2).unwrap();
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(tag.contains(" src=\"/console/"), "inline script: {tag}");
        }
        assert!(!html.contains("style="), "inline style attribute");
        for (i, _) in html.match_indices(" on") {
            let rest = &html[i + 3..];
            let name_len = rest.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(rest.len());
            assert!(!rest[name_len..].starts_with('='), "inline event handler near {}", &html[i..i + 20]);
        }
        for (name, _, bytes) in ASSETS.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            let js = std::str::from_utf8(bytes).unwrap();
            for banned in
                ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "localStorage"]
            {
                assert!(!js.contains(banned), "{name} uses {banned}");
            }
        }
    }
}
