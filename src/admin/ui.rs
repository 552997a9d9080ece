//! The status page's files, compiled into the binary.
//!
//! `GET /` (or `/ui`) on the admin server answers with `index.html`, which
//! loads `/ui/style.css` and `/ui/app.js`; the script polls `/status` every
//! second and renders it. Nothing else is fetched: no CDN, no fonts, no
//! build step, and the Content-Security-Policy sent with every file keeps
//! it that way (the browser refuses any other origin). Read-only: the page
//! offers no action.

/// One file of the page.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("ui/index.html"),
};

/// Sent with every asset: scripts, styles, images and fetches from this
/// origin only; no inline script, no framing, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The file served at `path`, if `path` is one of the page's.
pub fn asset(path: &str) -> Option<&'static Asset> {
    const CSS: Asset = Asset {
        content_type: "text/css; charset=utf-8",
        body: include_str!("ui/style.css"),
    };
    const JS: Asset = Asset {
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/app.js"),
    };
    match path {
        "/" | "/ui" | "/ui/" => Some(&INDEX),
        "/ui/style.css" => Some(&CSS),
        "/ui/app.js" => Some(&JS),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_with_their_types() {
        for path in ["/", "/ui", "/ui/"] {
            let page = asset(path).unwrap();
            assert!(page.content_type.starts_with("text/html"));
            assert!(page.body.contains("/ui/app.js") && page.body.contains("/ui/style.css"));
        }
        assert!(
            asset("/ui/app.js")
                .unwrap()
                .content_type
                .starts_with("text/javascript")
        );
        assert!(
            asset("/ui/style.css")
                .unwrap()
                .content_type
                .starts_with("text/css")
        );
        assert!(asset("/ui/other.js").is_none() && asset("/index.html").is_none());
    }

    #[test]
    fn nothing_is_loaded_from_elsewhere_and_data_is_never_parsed_as_html() {
        for path in ["/", "/ui/app.js", "/ui/style.css"] {
            let body = asset(path).unwrap().body;
            for banned in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!body.contains(banned), "{path} contains {banned}");
            }
        }
        let js = asset("/ui/app.js").unwrap().body;
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(banned), "app.js uses {banned}");
        }
    }
}
