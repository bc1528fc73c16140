//! The browser page's static parts and `walsh serve`, without a browser (the page itself
//! runs in headless Chromium under `cargo xtask test`): the model list matches the shipped
//! models, every element the script looks up exists, and the server serves the page and
//! the models with the right types, ranges, revalidation and compression, nothing outside
//! them, and stays within its bounds against clients that misbehave. Every server listens
//! on 127.0.0.1 and every socket has a timeout, so a failing test ends by itself.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
fn models_json_hashes_and_sizes_match_the_files() {
    // The page keys its model cache by these and refuses a download that differs: a
    // retrained model needs its new hashes here (`sha256sum models/*/*`). `bytes` is the
    // download the model selector shows: model.safetensors and config.json together.
    use sha2::{Digest, Sha256};
    let text = std::fs::read_to_string(root().join("web/models.json")).unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    for m in &list {
        let url = m["url"].as_str().unwrap();
        let mut download = 0;
        for (file, field) in [
            ("model.safetensors", "sha256"),
            ("config.json", "config_sha256"),
        ] {
            let bytes = std::fs::read(root().join(url).join(file)).unwrap();
            download += bytes.len() as u64;
            let hash: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(m[field].as_str(), Some(hash.as_str()), "{url}/{file}");
        }
        assert_eq!(m["bytes"].as_u64(), Some(download), "{url}: bytes");
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

/// `walsh serve --port 0 ARGS`, stopped on drop.
struct Server {
    child: Child,
    port: u16,
    /// Where its stderr goes.
    log: tempfile::NamedTempFile,
}

/// A client socket can wait this long at most: a test that fails does not hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

impl Server {
    fn start(args: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_walsh"))
            .args(["serve", "--port", "0"])
            .args(args)
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
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
        Server { child, port, log }
    }

    /// What it wrote to stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s
    }

    /// One request with extra header lines, on its own connection.
    fn get(&self, method: &str, path: &str, headers: &[&str]) -> Reply {
        let host = format!("Host: 127.0.0.1:{}", self.port);
        self.raw(method, path, &[&[host.as_str()], headers].concat())
    }

    /// One request with exactly these header lines (`Connection: close` added).
    fn raw(&self, method: &str, path: &str, headers: &[&str]) -> Reply {
        let mut s = self.send(method, path, headers, b"");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        Reply::parse(&raw, method == "HEAD")
    }

    /// Writes one request (with a body when it is not empty); returns the connection.
    fn send(&self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> TcpStream {
        let mut s = self.connect();
        let mut request = format!("{method} {path} HTTP/1.1\r\n");
        for h in headers {
            request += &format!("{h}\r\n");
        }
        if !body.is_empty() {
            request += &format!("Content-Length: {}\r\n", body.len());
        }
        request += "Connection: close\r\n\r\n";
        s.write_all(request.as_bytes()).unwrap();
        // A refused body may close the connection before all of it is read.
        let _ = s.write_all(body);
        s
    }

    /// `POST path` with a JSON body and extra header lines.
    fn post(&self, path: &str, body: &str, headers: &[&str]) -> Reply {
        let host = format!("Host: 127.0.0.1:{}", self.port);
        let mut s = self.send(
            "POST",
            path,
            &[&[host.as_str()], headers].concat(),
            body.as_bytes(),
        );
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        Reply::parse(&raw, false)
    }

    /// Resident memory of the server process, in KiB (Linux).
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8], head_only: bool) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.lines();
        let status = lines.next().unwrap();
        assert!(status.starts_with("HTTP/1.1 "), "{status}");
        let status = status[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        if chunked && !head_only {
            body = dechunk(&body);
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn serve_gives_the_page_and_the_models_and_nothing_else() {
    let server = Server::start(&[]);
    let r = server.get("GET", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.body,
        std::fs::read(root().join("web/index.html")).unwrap()
    );

    // A service worker must come with a JavaScript type or the browser refuses it.
    for script in ["/main.js", "/sw.js"] {
        let r = server.get("GET", script, &[]);
        assert_eq!(r.status, 200, "{script}");
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8"),
            "{script}"
        );
    }

    let weights = "models/shakespeare-hadamard/model.safetensors";
    let r = server.get("GET", &format!("/{weights}"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, std::fs::read(root().join(weights)).unwrap());
    let r = server.get("GET", "/models/shakespeare-hadamard/config.json", &[]);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = server.get("HEAD", "/models.json", &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    let len = std::fs::metadata(root().join("web/models.json"))
        .unwrap()
        .len();
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));

    for outside in [
        "/../Cargo.toml",
        "/models/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/nope.js",
    ] {
        assert_eq!(server.get("GET", outside, &[]).status, 404, "{outside}");
    }
    let r = server.get("POST", "/", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

/// A site in a temporary directory: `web/` with a page, a script and a module, `models/`,
/// and `secret.txt` outside both, with symbolic links out of the web root.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("web/pkg")).unwrap();
        std::fs::create_dir_all(root.join("models/m")).unwrap();
        std::fs::write(root.join("web/index.html"), "<!doctype html><p>page</p>").unwrap();
        // Compressible, like real scripts and modules.
        let js: String = (0..2000)
            .map(|i| format!("export const v{i} = {i};\n"))
            .collect();
        std::fs::write(root.join("web/pkg/walsh.js"), js).unwrap();
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.extend((0..60_000u32).map(|i| (i % 7) as u8));
        std::fs::write(root.join("web/pkg/walsh_bg.wasm"), wasm).unwrap();
        std::fs::write(root.join("models/m/config.json"), "{\"hidden_size\": 64}").unwrap();
        std::fs::write(root.join("secret.txt"), "secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(root.join("secret.txt"), root.join("web/out.txt")).unwrap();
            symlink(root, root.join("web/up")).unwrap();
        }
        Site { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let web = self.path("web");
        let models = self.path("models");
        let args = [
            &[
                "--web",
                web.to_str().unwrap(),
                "--models",
                models.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        Server::start(&args)
    }
}

#[test]
fn serve_keeps_every_spelling_of_a_path_inside_the_two_roots() {
    let site = Site::new();
    let server = site.serve(&[]);
    assert_eq!(server.get("GET", "/models/m/config.json", &[]).status, 200);
    // A link is followed while it stays inside its root.
    #[cfg(unix)]
    assert_eq!(server.get("GET", "/up/web/index.html", &[]).status, 200);
    for target in [
        "/../secret.txt",
        "/../../secret.txt",
        "/models/../secret.txt",
        "/models/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/models/..%2f..%2fsecret.txt",
        "/models/%2e%2e/%2e%2e/secret.txt",
        "/models..%2fsecret.txt",
        "/%5c..%5csecret.txt",
        "/..%5csecret.txt",
        "/%c0%ae%c0%ae/secret.txt",
        "/%2e%2e%00/secret.txt",
        "//secret.txt",
        "/out.txt",
        "/up/secret.txt",
        "/up/models/m/config.json",
        "/./out.txt",
        "/.git/config",
    ] {
        let r = server.get("GET", target, &[]);
        assert!(
            r.status == 404 || r.status == 400,
            "{target}: {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("secret"),
            "{target}"
        );
    }
    // Absolute-form targets are resolved the same way.
    let absolute = format!("http://127.0.0.1:{}/../secret.txt", server.port);
    assert_eq!(server.get("GET", &absolute, &[]).status, 404);
}

#[test]
fn serve_answers_ranges_and_conditional_requests() {
    let server = Server::start(&[]);
    let path = "/models/shakespeare-hadamard/model.safetensors";
    let file = std::fs::read(root().join(&path[1..])).unwrap();
    let len = file.len();

    let r = server.get("GET", path, &["Range: bytes=0-99"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &file[..100]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-99/{len}").as_str())
    );
    let r = server.get("GET", path, &["Range: bytes=-10"]);
    assert_eq!((r.status, r.body.as_slice()), (206, &file[len - 10..]));
    let r = server.get("GET", path, &["Range: bytes=1000-"]);
    assert_eq!((r.status, r.body.as_slice()), (206, &file[1000..]));
    let r = server.get("GET", path, &[&format!("Range: bytes={len}-")]);
    assert_eq!(r.status, 416);

    let full = server.get("GET", path, &[]);
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let etag = full.header("etag").expect("an ETag").to_string();
    let modified = full
        .header("last-modified")
        .expect("a Last-Modified")
        .to_string();
    let r = server.get("GET", path, &[&format!("If-None-Match: {etag}")]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    let r = server.get("GET", path, &[&format!("If-Modified-Since: {modified}")]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    let r = server.get("GET", path, &["If-None-Match: \"other\""]);
    assert_eq!(r.status, 200);
    // If-Range: the range while the file is unchanged, the whole file otherwise.
    let r = server.get(
        "GET",
        path,
        &["Range: bytes=0-9", &format!("If-Range: {etag}")],
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &file[..10]));
    let r = server.get("GET", path, &["Range: bytes=0-9", "If-Range: \"other\""]);
    assert_eq!((r.status, r.body.len()), (200, len));
}

#[test]
fn serve_gzips_scripts_and_modules_but_not_weights() {
    let site = Site::new();
    let server = site.serve(&[]);
    for (path, kind) in [
        ("/pkg/walsh_bg.wasm", "application/wasm"),
        ("/pkg/walsh.js", "text/javascript; charset=utf-8"),
    ] {
        let file = std::fs::read(site.path(&format!("web{path}"))).unwrap();
        let r = server.get("GET", path, &["Accept-Encoding: gzip"]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(kind));
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{path}");
        assert!(
            r.body.len() < file.len() / 4,
            "{path}: {} bytes",
            r.body.len()
        );
        assert_eq!(gunzip(&r.body), file, "{path}");
        // Another representation of the file: its ETag is weak.
        assert!(
            r.header("etag").unwrap().starts_with("W/\""),
            "{:?}",
            r.headers
        );
        // Without Accept-Encoding, the file as it is.
        let plain = server.get("GET", path, &[]);
        assert_eq!(
            (plain.header("content-encoding"), &plain.body),
            (None, &file)
        );
        // Ranges are of the file itself, never compressed.
        let r = server.get("GET", path, &["Accept-Encoding: gzip", "Range: bytes=0-7"]);
        assert_eq!((r.status, r.header("content-encoding")), (206, None));
        assert_eq!(r.body, &file[..8]);
    }
    let server = Server::start(&[]);
    let weights = "/models/shakespeare-hadamard/model.safetensors";
    let r = server.get("GET", weights, &["Accept-Encoding: gzip"]);
    assert_eq!(r.header("content-encoding"), None);
    // The page's download progress needs the length.
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

#[test]
fn serve_answers_only_to_its_own_host_names() {
    let server = Server::start(&["--allow-host", "walsh.test"]);
    let port = server.port;
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "walsh.test".into(),
    ] {
        let r = server.raw("GET", "/", &[&format!("Host: {host}")]);
        assert_eq!(r.status, 200, "{host}");
    }
    // What a page on another site reaches through DNS rebinding.
    for host in [
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
    ] {
        let r = server.raw("GET", "/", &[&format!("Host: {host}")]);
        assert_eq!(r.status, 403, "{host}");
        assert!(String::from_utf8_lossy(&r.body).contains("--allow-host"));
    }
    assert_eq!(server.raw("GET", "/", &[]).status, 400);
}

#[test]
fn serve_refuses_an_oversized_request_line_with_bounded_memory() {
    let server = Server::start(&[]);
    // Warm up, then measure.
    assert_eq!(server.get("GET", "/", &[]).status, 200);
    let before = server.rss_kib();
    let mut s = server.connect();
    s.write_all(b"GET /").unwrap();
    // Up to 64 MiB of request line and no newline: the server must stop reading early.
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0usize;
    while sent < 64 << 20 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < 64 << 20,
        "the server took {sent} bytes of one request line"
    );
    // The server closed the connection (a reset is as good as the 431 before it), rather
    // than leaving the client to time out.
    let mut reply = Vec::new();
    if let Err(e) = s.read_to_end(&mut reply) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    if !reply.is_empty() {
        let status = String::from_utf8_lossy(&reply[..12.min(reply.len())]).to_string();
        assert_eq!(status, "HTTP/1.1 431");
    }
    if let (Some(before), Some(after)) = (before, server.rss_kib()) {
        assert!(
            after < before + 8 * 1024,
            "resident memory grew from {before} KiB to {after} KiB"
        );
    }
    // And the server still serves.
    assert_eq!(server.get("GET", "/", &[]).status, 200);
}

/// Reads until the server closes the connection; how long that took.
fn time_to_close(s: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
        assert!(start.elapsed() < CLIENT_TIMEOUT, "never closed");
    }
}

#[test]
fn serve_closes_idle_and_slow_connections() {
    let server = Server::start(&["--idle-timeout", "1"]);
    // A connection that never sends a request.
    let mut idle = server.connect();
    let waited = time_to_close(&mut idle);
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // A keep-alive connection after its response.
    let mut s = server.connect();
    write!(s, "GET /models.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let len = std::fs::metadata(root().join("web/models.json"))
        .unwrap()
        .len() as usize;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < len {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let waited = time_to_close(&mut s);
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // A client that trickles its headers, one line every 200 ms, never finishing.
    let mut slow = server.connect();
    slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        if slow.write_all(b"X-Slow: y\r\n").is_err() {
            closed = true;
            break;
        }
    }
    let waited = start.elapsed();
    assert!(closed || time_to_close(&mut slow) < Duration::from_secs(1));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn serve_limits_concurrent_connections() {
    let server = Server::start(&["--max-connections", "2", "--idle-timeout", "2"]);
    // Two idle connections take both slots...
    let idle: Vec<TcpStream> = (0..2).map(|_| server.connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // ...so a third request waits until the idle timeout frees one.
    let start = Instant::now();
    let r = server.get("GET", "/models.json", &[]);
    let waited = start.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        std::fs::read(root().join("web/models.json")).unwrap()
    );
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    drop(idle);
}

#[test]
fn serve_answers_200_concurrent_gets() {
    let server = Server::start(&[]);
    let files = [
        "web/index.html",
        "web/main.js",
        "web/models.json",
        "web/style.css",
        "models/shakespeare-hadamard/config.json",
        "models/shakespeare-dense/config.json",
    ];
    let expected: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(root().join(f)).unwrap())
        .collect();
    let start = std::sync::Barrier::new(200);
    let ok = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for i in 0..200 {
            let (server, start, ok, expected) = (&server, &start, &ok, &expected);
            let file = files[i % files.len()];
            scope.spawn(move || {
                let path = format!("/{}", file.strip_prefix("web/").unwrap_or(file));
                start.wait();
                let r = server.get("GET", &path, &[]);
                assert_eq!(r.status, 200, "{path}");
                assert_eq!(r.body, expected[i % files.len()], "{path}");
                ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    assert_eq!(ok.into_inner(), 200);
}

/// The JSON of a reply's body.
fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&reply.body)))
}

/// A completion's text: the choice's, or the streamed chunks' in order (checking the
/// stream's shape: `data:` events, one finish reason, `[DONE]` last).
fn completion_text(reply: &Reply) -> (String, String) {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    if reply.header("content-type") == Some("application/json") {
        let v = json(reply);
        let choice = &v["choices"][0];
        return (
            choice["text"].as_str().unwrap().to_string(),
            choice["finish_reason"].as_str().unwrap().to_string(),
        );
    }
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let body = String::from_utf8(reply.body.clone()).unwrap();
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{body}");
    let (mut text, mut finish) = (String::new(), String::new());
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
        text += v["choices"][0]["text"].as_str().unwrap();
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            assert!(finish.is_empty(), "two finish reasons in {body}");
            finish = f.to_string();
        }
    }
    (text, finish)
}

/// What `walsh generate --device cpu` prints after the prompt, greedy.
fn generated(prompt: &str, tokens: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_walsh"))
        .args([
            "generate",
            "--device",
            "cpu",
            "--temperature",
            "0",
            "--prompt",
            prompt,
        ])
        .args(["--max-tokens", &tokens.to_string()])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_prefix(prompt)
        .and_then(|t| t.strip_suffix('\n'))
        .unwrap()
        .to_string()
}

/// `walsh serve --model`: the models list, and completions (plain, streamed, with a stop
/// string, several at once) that are the text `walsh generate` writes, on the CPU and each
/// software adapter (`WALSH_TEST_BACKENDS`, default vulkan,gl).
#[test]
fn completions_api_answers_as_generate_does() {
    let want = generated("ROMEO.", 40);
    let juliet = generated("JULIET.", 40);
    let backends = std::env::var("WALSH_TEST_BACKENDS").unwrap_or_else(|_| "vulkan,gl".into());
    let mut devices = vec![vec!["--device", "cpu"]];
    devices.extend(backends.split(',').map(|b| vec!["--adapter", b.trim()]));
    for device in devices {
        let model = ["--model", "models/shakespeare-hadamard", "--max-batch", "4"];
        let server = Server::start(&[&model[..], &device].concat());
        let on = device.join(" ");
        let models = json(&server.get("GET", "/v1/models", &[]));
        assert_eq!(models["data"][0]["id"], "shakespeare-hadamard");
        let ask = |prompt: &str, extra: &str| {
            let body = format!(
                r#"{{"model": "shakespeare-hadamard", "prompt": {prompt:?}, "max_tokens": 40, "temperature": 0{extra}}}"#
            );
            completion_text(&server.post("/v1/completions", &body, &[]))
        };
        assert_eq!(ask("ROMEO.", ""), (want.clone(), "length".into()), "{on}");
        let streamed = ask("ROMEO.", r#", "stream": true"#);
        assert_eq!(streamed, (want.clone(), "length".into()), "{on}");
        // A stop string ends the text before it, streamed or not.
        let cut = want.find(" so").expect("the shipped model's greedy text");
        for stream in ["false", "true"] {
            let extra = format!(r#", "stop": [" so", "zzz"], "stream": {stream}"#);
            let stopped = (want[..cut].to_string(), "stop".into());
            assert_eq!(ask("ROMEO.", &extra), stopped, "{on}");
        }
        // Four at once share the decoder's chunks and each gets its solo text.
        let prompts = ["JULIET.", "KING.", "First Citizen:", "O, "];
        let solo: Vec<(String, String)> = prompts.iter().map(|p| ask(p, "")).collect();
        let together: Vec<(String, String)> = std::thread::scope(|s| {
            let runs: Vec<_> = prompts.iter().map(|p| s.spawn(|| ask(p, ""))).collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(together, solo, "{on}");
        assert_eq!(solo[0].0, juliet, "{on}");
    }
}

/// The API's refusals: OpenAI's error shape with the status a client expects.
#[test]
fn completions_api_refuses_clearly() {
    let server = Server::start(&[
        "--model",
        "models/shakespeare-hadamard",
        "--device",
        "cpu",
        "--max-batch",
        "1",
        "--max-queue",
        "0",
        "--api-key",
        "sesame",
    ]);
    let key = "Authorization: Bearer sesame";
    let refused = |reply: Reply, status: u16, says: &str| {
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let message = json(&reply)["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(says), "{message}");
    };
    let ok = r#"{"prompt": "ROMEO.", "max_tokens": 4}"#;
    refused(server.post("/v1/completions", ok, &[]), 401, "API key");
    let wrong = server.post("/v1/completions", ok, &["Authorization: Bearer sesamf"]);
    refused(wrong, 401, "API key");
    assert_eq!(server.post("/v1/completions", ok, &[key]).status, 200);
    for (body, says) in [
        ("{bad", "not valid JSON"),
        ("[1]", "JSON object"),
        (r#"{"prompt": 7}"#, "`prompt`"),
        (r#"{"prompt": ""}"#, "empty"),
        (r#"{"prompt": "a", "max_tokens": 500}"#, "context is 128"),
        (r#"{"prompt": "a", "temperature": "hot"}"#, "`temperature`"),
        (r#"{"prompt": "a", "n": 2}"#, "`n`"),
        (
            r#"{"prompt": "a", "frequency_penalty": 1}"#,
            "not supported",
        ),
    ] {
        refused(server.post("/v1/completions", body, &[key]), 400, says);
    }
    let other = r#"{"prompt": "a", "model": "gpt-4"}"#;
    refused(
        server.post("/v1/completions", other, &[key]),
        404,
        "not served",
    );
    let huge = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(2 << 20));
    refused(server.post("/v1/completions", &huge, &[key]), 413, "limit");
    refused(
        server.get("GET", "/v1/completions", &[key]),
        405,
        "does not take",
    );
    // One slot and no queue: a second request while a stream runs gets 429; a client that
    // goes away frees the slot.
    let host = format!("Host: 127.0.0.1:{}", server.port);
    let long = r#"{"prompt": "ROMEO.", "max_tokens": 120, "stream": true}"#;
    let mut stream = server.send("POST", "/v1/completions", &[&host, key], long.as_bytes());
    let mut first = [0u8; 64];
    stream.read_exact(&mut first).unwrap();
    let busy = server.post("/v1/completions", ok, &[key]);
    assert_eq!(busy.header("retry-after"), Some("1"));
    refused(busy, 429, "--max-batch");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = server.post("/v1/completions", ok, &[key]);
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 429);
        assert!(
            Instant::now() < deadline,
            "the gone client's slot was never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every answer above is counted by status in /metrics (which needs no key) and
    // logged in one line on stderr.
    let metrics = server.get("GET", "/metrics", &[]);
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let metrics = String::from_utf8(metrics.body).unwrap();
    let count = |status: u16| -> u64 {
        let name = format!("walsh_requests_total{{path=\"/v1/completions\",status=\"{status}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name)?.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        [401, 400, 404, 413, 405].map(count),
        [2, 8, 1, 1, 1],
        "{metrics}"
    );
    assert!(count(200) >= 3 && count(429) >= 1, "{metrics}");
    assert!(metrics.contains("walsh_time_to_first_token_seconds_count "));
    let log = server.log();
    let line = |says: &str| log.lines().filter(|l| l.contains(says)).count();
    assert_eq!(line("walsh: POST /v1/completions 401 "), 2, "{log}");
    assert_eq!(line("walsh: POST /v1/completions 400 "), 8, "{log}");
    assert!(
        line("walsh: POST /v1/completions 200 prompt_tokens=6 completion_tokens=4 ") >= 2,
        "{log}"
    );
    assert_eq!(line("(client gone)"), 1, "{log}");
    // Without --model there is no API, said in the same shape.
    let plain = Server::start(&[]);
    refused(plain.post("/v1/completions", ok, &[]), 404, "--model");
}

/// A streamed completion read as it arrives: the reply, and when each server-sent event
/// was complete. Each event is one HTTP chunk and ends with a blank line, which chunk
/// framing (`\r\n`) never makes, so counting "\n\n" counts the events received.
fn stream_timed(server: &Server, body: &str) -> (Reply, Vec<Instant>) {
    let host = format!("Host: 127.0.0.1:{}", server.port);
    let mut s = server.send("POST", "/v1/completions", &[&host], body.as_bytes());
    let (mut raw, mut at) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let now = Instant::now();
        let events = raw.windows(2).filter(|w| w == b"\n\n").count();
        at.resize(events, now);
    }
    (Reply::parse(&raw, false), at)
}

/// The value at quantile q of sorted durations, in ms.
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// 32 concurrent streaming clients x 64 greedy tokens on `walsh serve --max-batch 32`:
/// every stream completes and is its solo run's text, on the CPU decoder and lavapipe
/// (`WALSH_TEST_BACKENDS`' first, default vulkan). Prints time to first token and the gap
/// between events (p50, p99) and the aggregate rate: figures, not assertions.
#[test]
fn thirty_two_streams_each_equal_their_solo_run() {
    let backends = std::env::var("WALSH_TEST_BACKENDS").unwrap_or_else(|_| "vulkan".into());
    let gpu = backends
        .split(',')
        .next()
        .unwrap_or("vulkan")
        .trim()
        .to_string();
    let names = ["ROMEO", "JULIET", "KING", "QUEEN"];
    let prompts: Vec<String> = (0..32)
        .map(|i| format!("{}{}", names[i % 4], ".".repeat(1 + i / 4)))
        .collect();
    let body = |prompt: &str| {
        format!(r#"{{"prompt": {prompt:?}, "max_tokens": 64, "temperature": 0, "stream": true}}"#)
    };
    for device in [vec!["--device", "cpu"], vec!["--adapter", gpu.as_str()]] {
        let on = device.join(" ");
        let args = [
            "--model",
            "models/shakespeare-hadamard",
            "--max-batch",
            "32",
        ];
        let server = Server::start(&[&args[..], &device].concat());
        let solo: Vec<(String, String)> = prompts
            .iter()
            .map(|p| completion_text(&stream_timed(&server, &body(p)).0))
            .collect();
        let start = std::sync::Barrier::new(prompts.len());
        let began = Instant::now();
        let runs: Vec<(Reply, Vec<Instant>, Instant)> = std::thread::scope(|scope| {
            let threads: Vec<_> = prompts
                .iter()
                .map(|p| {
                    let (server, start, body) = (&server, &start, body(p));
                    scope.spawn(move || {
                        start.wait();
                        let sent = Instant::now();
                        let (reply, at) = stream_timed(server, &body);
                        (reply, at, sent)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let wall = began.elapsed();
        let (mut first, mut gaps) = (Vec::new(), Vec::new());
        for (i, (reply, at, sent)) in runs.iter().enumerate() {
            let got = completion_text(reply);
            assert_eq!(got, solo[i], "stream {i} ({:?}) on {on}", prompts[i]);
            assert_eq!(got.1, "length", "{on}");
            // Events: the text pieces, the finish, [DONE].
            first.push(at[0].duration_since(*sent));
            gaps.extend(at.windows(2).map(|w| w[1].duration_since(w[0])));
        }
        first.sort();
        gaps.sort();
        eprintln!(
            "32 streams x 64 tokens on {on}: time to first token p50 {:.0} ms, p99 {:.0} ms; \
             between events p50 {:.1} ms, p99 {:.0} ms; {:.1} tok/s in all",
            quantile_ms(&first, 0.5),
            quantile_ms(&first, 0.99),
            quantile_ms(&gaps, 0.5),
            quantile_ms(&gaps, 0.99),
            (32 * 64) as f64 / wall.as_secs_f64()
        );
    }
}

/// `POST /v1/chat/completions` on a model that carries a tokenizer and a chat template
/// (`tests/data/chat`): the reply, streamed or not, is what the library gives for the
/// conversation rendered by that template (checked against Jinja2 in `model::chat`),
/// encoded with its special tokens and decoded greedily on the CPU decoder up to an
/// end-of-turn token; a model without a template answers 400.
#[test]
fn chat_completions_follow_the_models_template() {
    use walsh::model::chat;
    use walsh::model::generate::{CpuBatch, GenerateOptions, generate};
    use walsh::model::tokens::load_tokenizer;
    use walsh::model::weights::Model;
    use walsh::ops::attention::KvFormat;
    use walsh::ops::sample::SamplingParams;

    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("chatty");
    let init = Command::new(env!("CARGO_BIN_EXE_walsh"))
        .args(["init-model", "--out", model_dir.to_str().unwrap()])
        .args([
            "--hidden-size",
            "64",
            "--layers",
            "2",
            "--heads",
            "4",
            "--context",
            "128",
        ])
        .args([
            "--tokenizer",
            "tests/data/chat/tokenizer.json",
            "--seed",
            "5",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    // What the library makes of the conversation.
    let model = Model::load(&model_dir).unwrap();
    let tokenizer = load_tokenizer(&model_dir, &model.config).unwrap();
    let conversation = serde_json::json!([
        {"role": "system", "content": "Answer in verse."},
        {"role": "user", "content": "Who is there?"},
    ]);
    let prompt = chat::render(&tokenizer, &conversation).unwrap();
    assert!(
        prompt.starts_with("<|begin_of_text|><|start_header_id|>system"),
        "{prompt}"
    );
    let tokens = tokenizer.encode_with(&prompt, false, true);
    assert_eq!(
        tokens[0],
        tokenizer.bos().unwrap(),
        "the template's BOS is the token"
    );
    let mut cpu = CpuBatch::new(&model, 1, 128, KvFormat::F16).unwrap();
    let options = GenerateOptions {
        max_tokens: 24,
        sampling: SamplingParams::greedy(),
        max_chunk: 8,
    };
    let g = generate(&mut cpu, std::slice::from_ref(&tokens), &options, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let generated = &g.tokens[0];
    let end = generated.iter().position(|&t| tokenizer.is_eog(t));
    let mut detok = tokenizer.continuation(false);
    let mut want = String::new();
    for &t in &generated[..end.unwrap_or(generated.len())] {
        want += &detok.push(t).unwrap();
    }
    want += &detok.finish();
    let want_finish = if end.is_some() { "stop" } else { "length" };

    let server = Server::start(&["--model", model_dir.to_str().unwrap(), "--device", "cpu"]);
    for stream in [false, true] {
        let body = serde_json::json!({
            "model": "chatty", "messages": conversation, "max_tokens": 24,
            "temperature": 0, "stream": stream,
        });
        let reply = server.post("/v1/chat/completions", &body.to_string(), &[]);
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let (text, finish) = if stream {
            let body = String::from_utf8(reply.body.clone()).unwrap();
            let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
            assert_eq!(events.last(), Some(&"data: [DONE]"), "{body}");
            let (mut text, mut finish) = (String::new(), String::new());
            for (i, e) in events[..events.len() - 1].iter().enumerate() {
                let v: serde_json::Value =
                    serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(v["object"], "chat.completion.chunk", "{e}");
                let delta = &v["choices"][0]["delta"];
                if i == 0 {
                    assert_eq!(delta["role"], "assistant", "{e}");
                }
                text += delta["content"].as_str().unwrap_or("");
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = f.to_string();
                }
            }
            (text, finish)
        } else {
            let v = json(&reply);
            assert_eq!(v["object"], "chat.completion");
            assert_eq!(v["choices"][0]["message"]["role"], "assistant");
            assert_eq!(v["usage"]["prompt_tokens"], tokens.len());
            (
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        assert_eq!(
            (text.as_str(), finish.as_str()),
            (want.as_str(), want_finish),
            "stream {stream}"
        );
    }
    // The shipped models carry no template: a 400 that says so.
    let plain = Server::start(&["--model", "models/shakespeare-hadamard", "--device", "cpu"]);
    let body = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
    let reply = plain.post("/v1/chat/completions", body, &[]);
    assert_eq!(reply.status, 400);
    let message = json(&reply)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("no chat template"), "{message}");
}
