//! The service map's HTTP requests, read and answered (pure): the page and
//! its files, `/api/graph?namespace=NS` and
//! `/api/flows?from=ID&to=ID[&port=N][&protocol=P]`. A malformed query is a
//! 400 naming what is wrong; an unknown namespace or edge is an empty answer.

use super::graph::Graph;

/// The page and its files, embedded in the binary: nothing is fetched from
/// anywhere else, so the page works offline.
const INDEX_HTML: &str = include_str!("../../../../ui/index.html");
const APP_JS: &str = include_str!("../../../../ui/app.js");
const STYLE_CSS: &str = include_str!("../../../../ui/style.css");
/// cytoscape, vendored by scripts/vendor-ui.sh (pinned version and sha512).
const CYTOSCAPE_JS: &str = include_str!("../../../../ui/vendor/cytoscape.min.js");
const CYTOSCAPE_LICENSE: &str = include_str!("../../../../ui/vendor/cytoscape.LICENSE");

/// An answer: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn ok(content_type: &'static str, body: impl Into<String>) -> Self {
        Self { status: 200, content_type, body: body.into() }
    }

    fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self::ok("application/json", body),
            Err(e) => Self::error(500, &format!("encoding the answer: {e}")),
        }
    }

    fn error(status: u16, message: &str) -> Self {
        Self { status, content_type: "application/json", body: serde_json::json!({ "error": message }).to_string() }
    }
}

/// Percent-decodes a query component (`+` is a space).
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                let byte = byte.ok_or_else(|| format!("{text:?} has a % not followed by two hex digits"))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

/// The query's parameters, each at most once and each one of `known`.
fn parameters(query: &str, known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (decode(key)?, decode(value)?);
        if !known.contains(&key.as_str()) {
            return Err(format!("unknown parameter {key:?} (known: {})", known.join(", ")));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!("parameter {key:?} given twice"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn namespace(text: &str) -> Result<&str, String> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    valid.then_some(text).ok_or_else(|| {
        format!("namespace {text:?} is not a namespace name (lower case letters, digits and '-', at most 63)")
    })
}

/// A node id as the graph names it.
fn node_id<'a>(key: &str, value: Option<&'a str>) -> Result<&'a str, String> {
    match value {
        None | Some("") => Err(format!("{key} is required: a node id from /api/graph")),
        Some(v) if v.len() > 512 || v.chars().any(char::is_control) => Err(format!("{key} {v:?} is not a node id")),
        Some(v) => Ok(v),
    }
}

const PROTOCOLS: [&str; 5] = ["TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6"];

/// Answers `GET path?query` from the aggregate at `now_ns`.
pub fn answer(method: &str, target: &str, graph: &std::sync::Mutex<Graph>, now_ns: u64) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" && method != "HEAD" {
        return Answer::error(405, &format!("{method} is not served here: only GET"));
    }
    let static_file = match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
        "/vendor/cytoscape.min.js" => Some(("text/javascript; charset=utf-8", CYTOSCAPE_JS)),
        "/vendor/cytoscape.LICENSE" => Some(("text/plain; charset=utf-8", CYTOSCAPE_LICENSE)),
        _ => None,
    };
    if let Some((content_type, body)) = static_file {
        return Answer::ok(content_type, body);
    }
    let result = match path {
        "/api/graph" => graph_answer(query, graph, now_ns),
        "/api/flows" => flows_answer(query, graph),
        _ => return Answer::error(404, &format!("{path} is not served here: /, /api/graph, /api/flows")),
    };
    result.unwrap_or_else(|why| Answer::error(400, &why))
}

fn graph_answer(query: &str, graph: &std::sync::Mutex<Graph>, now_ns: u64) -> Result<Answer, String> {
    let params = parameters(query, &["namespace"])?;
    let ns = match get(&params, "namespace") {
        None | Some("") => None,
        Some(text) => Some(namespace(text)?),
    };
    // Encoded once the lock is let go.
    let view = graph.lock().map_err(|_| "the aggregate is unusable (a panic held it)".to_string())?.view(ns, now_ns);
    Ok(Answer::json(&view))
}

fn flows_answer(query: &str, graph: &std::sync::Mutex<Graph>) -> Result<Answer, String> {
    let params = parameters(query, &["from", "to", "port", "protocol"])?;
    let from = node_id("from", get(&params, "from"))?;
    let to = node_id("to", get(&params, "to"))?;
    let port = match get(&params, "port") {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<u16>().map(u32::from).map_err(|_| format!("port {text:?} is not a port number (0-65535)"))?,
        ),
    };
    let protocol = match get(&params, "protocol") {
        None | Some("") => None,
        Some(text) => Some(
            PROTOCOLS
                .iter()
                .copied()
                .find(|p| p.eq_ignore_ascii_case(text))
                .ok_or_else(|| format!("protocol {text:?} is not one of {}", PROTOCOLS.join(", ")))?,
        ),
    };
    let flows = graph
        .lock()
        .map_err(|_| "the aggregate is unusable (a panic held it)".to_string())?
        .flows(from, to, port, protocol);
    Ok(Answer::json(&serde_json::json!({ "from": from, "to": to, "port": port, "protocol": protocol, "flows": flows })))
}

#[cfg(test)]
mod tests {
    use super::super::graph::Limits;
    use super::*;

    fn ask(target: &str) -> Answer {
        answer("GET", target, &std::sync::Mutex::new(Graph::new(Limits::default())), 1)
    }

    fn error_of(a: &Answer) -> String {
        let v: serde_json::Value = serde_json::from_str(&a.body).expect("json");
        v["error"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn serves_the_page_and_its_vendored_library() {
        let page = ask("/");
        assert_eq!((page.status, page.content_type), (200, "text/html; charset=utf-8"));
        assert!(page.body.contains("vendor/cytoscape.min.js"), "the page loads the embedded library");
        assert!(!page.body.contains("http://") && !page.body.contains("https://"), "nothing from elsewhere");
        assert!(ask("/vendor/cytoscape.min.js").body.contains("cytoscape"));
        assert!(ask("/vendor/cytoscape.LICENSE").body.contains("Permission is hereby granted"));
        assert_eq!(ask("/app.js").status, 200);
    }

    #[test]
    fn bad_queries_are_400_naming_what_is_wrong() {
        for (target, says) in [
            ("/api/graph?namespace=Not_A_Namespace", "namespace \"Not_A_Namespace\""),
            ("/api/graph?ns=backend", "unknown parameter \"ns\""),
            ("/api/graph?namespace=a&namespace=b", "given twice"),
            ("/api/graph?namespace=%zz", "two hex digits"),
            ("/api/flows?to=backend%2Fapi", "from is required"),
            ("/api/flows?from=frontend%2Fweb&to=backend%2Fapi&port=http", "port \"http\""),
            ("/api/flows?from=frontend%2Fweb&to=backend%2Fapi&port=70000", "port \"70000\""),
            ("/api/flows?from=a&to=b&protocol=QUIC", "protocol \"QUIC\""),
        ] {
            let a = ask(target);
            assert_eq!(a.status, 400, "{target}: {a:?}");
            assert!(error_of(&a).contains(says), "{target}: {}", a.body);
        }
        assert_eq!(ask("/nothing").status, 404);
        assert_eq!(answer("POST", "/api/graph", &std::sync::Mutex::new(Graph::new(Limits::default())), 1).status, 405);
    }

    #[test]
    fn an_unknown_namespace_or_edge_is_empty() {
        let graph: serde_json::Value = serde_json::from_str(&ask("/api/graph?namespace=nowhere").body).expect("json");
        assert_eq!(graph["edges"], serde_json::json!([]));
        let flows = ask("/api/flows?from=frontend%2Fweb&to=backend%2Fapi&port=8080&protocol=tcp");
        assert_eq!(flows.status, 200, "{flows:?}");
        let flows: serde_json::Value = serde_json::from_str(&flows.body).expect("json");
        assert_eq!((flows["from"].as_str(), flows["protocol"].as_str()), (Some("frontend/web"), Some("TCP")));
        assert_eq!(flows["flows"], serde_json::json!([]));
    }
}
