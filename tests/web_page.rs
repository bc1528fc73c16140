//! The browser page's static parts and `walsh serve`, without a browser (the page itself
//! runs in headless Chromium under `cargo xtask test`): the model list matches the shipped
//! models, every element the script looks up exists, and the server serves the page and
//! the models with the right types and nothing outside them.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn models_json_lists_exactly_the_shipped_models() {
    let text = std::fs::read_to_string(root().join("web/models.json")).unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let listed: BTreeSet<String> = list
        .iter()
        .map(|m| {
            m["url"]
                .as_str()
                .expect("every entry has a url")
                .to_string()
        })
        .collect();
    let shipped: BTreeSet<String> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").is_file())
        .map(|e| format!("models/{}", e.file_name().to_string_lossy()))
        .collect();
    assert_eq!(listed, shipped);
    // The first entry is the one the page loads: the default model of `walsh generate`.
    assert_eq!(list[0]["url"], "models/shakespeare-hadamard");
}

#[test]
fn models_json_hashes_match_the_files() {
    // The page keys its model cache by these and refuses a download that differs: a
    // retrained model needs its new hashes here (`sha256sum models/*/*`).
    use sha2::{Digest, Sha256};
    let text = std::fs::read_to_string(root().join("web/models.json")).unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    for m in &list {
        let url = m["url"].as_str().unwrap();
        for (file, field) in [
            ("model.safetensors", "sha256"),
            ("config.json", "config_sha256"),
        ] {
            let bytes = std::fs::read(root().join(url).join(file)).unwrap();
            let hash: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(m[field].as_str(), Some(hash.as_str()), "{url}/{file}");
        }
    }
}

#[test]
fn every_element_the_script_uses_is_in_the_page() {
    let html = std::fs::read_to_string(root().join("web/index.html")).unwrap();
    let js = std::fs::read_to_string(root().join("web/main.js")).unwrap();
    let mut ids = BTreeSet::new();
    for (i, _) in js.match_indices("$('") {
        let rest = &js[i + 3..];
        if let Some(end) = rest.find('\'') {
            ids.insert(rest[..end].to_string());
        }
    }
    // `$(`suite-${s}`)` covers these.
    for s in ["kernels", "decoder", "paper"] {
        ids.insert(format!("suite-{s}"));
    }
    assert!(ids.len() > 20, "found only {ids:?}");
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !html.contains(&format!("id=\"{id}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "ids used by main.js but not in index.html: {missing:?}"
    );
}

/// `walsh serve --port 0`, stopped on drop.
struct Server(Child, u16);

impl Server {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_walsh"))
            .args(["serve", "--port", "0"])
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server(child, port)
    }

    /// (status line, content type, body) of one request.
    fn request(&self, method: &str, path: &str) -> (String, String, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.1)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head.lines().next().unwrap().to_string();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap_or("")
            .to_string();
        (status, content_type, raw[split + 4..].to_vec())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_gives_the_page_and_the_models_and_nothing_else() {
    let server = Server::start();
    let (status, kind, body) = server.request("GET", "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(kind, "text/html; charset=utf-8");
    assert_eq!(body, std::fs::read(root().join("web/index.html")).unwrap());

    // A service worker must come with a JavaScript type or the browser refuses it.
    for script in ["/main.js", "/sw.js"] {
        let (status, kind, _) = server.request("GET", script);
        assert_eq!(status, "HTTP/1.1 200 OK", "{script}");
        assert!(kind.starts_with("text/javascript"), "{script}: {kind}");
    }

    let weights = "models/shakespeare-hadamard/model.safetensors";
    let (status, kind, body) = server.request("GET", &format!("/{weights}"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(kind, "application/octet-stream");
    assert_eq!(body, std::fs::read(root().join(weights)).unwrap());
    let (_, kind, _) = server.request("GET", "/models/shakespeare-hadamard/config.json");
    assert_eq!(kind, "application/json");
    let (status, _, body) = server.request("HEAD", "/models.json");
    assert_eq!((status.as_str(), body.len()), ("HTTP/1.1 200 OK", 0));

    for outside in [
        "/../Cargo.toml",
        "/models/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/nope.js",
    ] {
        let (status, _, _) = server.request("GET", outside);
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{outside}");
    }
    let (status, _, _) = server.request("POST", "/");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
}
