//! `walsh serve`: a small static file server for the browser page. `/` is `web/`,
//! `/models/` is `models/`, on 127.0.0.1 only. Plain HTTP/1.1 over std, one thread per
//! connection: it serves one developer's browser, not the internet.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Port on 127.0.0.1; 0 picks a free one (the URL is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The page's directory (built with `cargo xtask web`).
    #[arg(long, default_value = "web")]
    pub web: PathBuf,
    /// The models directory, served under /models/.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
}

pub fn serve_cmd(args: &ServeArgs) -> Result<()> {
    if !args.web.join("index.html").is_file() {
        bail!(
            "{} has no index.html: run walsh serve from the repository root, or pass --web DIR",
            args.web.display()
        );
    }
    if !args.web.join("pkg").join("walsh_bg.wasm").is_file() {
        eprintln!(
            "walsh: {}/pkg is not built: run `cargo xtask web` first (the page will say so too)",
            args.web.display()
        );
    }
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .with_context(|| format!("listening on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();
    // Scripts read this line to find the port when they pass --port 0.
    println!(
        "serving http://127.0.0.1:{port}/ (web: {}, models: {}); Ctrl-C stops",
        args.web.display(),
        args.models.display()
    );
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let roots = args.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(stream, &roots) {
                eprintln!("walsh serve: {e:#}");
            }
        });
    }
    Ok(())
}

fn handle(stream: TcpStream, roots: &ServeArgs) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    // Keep-alive: browsers reuse the connection for the page's many requests.
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            if header.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let response = respond(method, target, roots);
        out.write_all(&response.head())?;
        if method != "HEAD" {
            out.write_all(&response.body)?;
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: &'static str, message: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{message}\n").into_bytes(),
        }
    }

    fn head(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\
             X-Content-Type-Options: nosniff\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes()
    }
}

fn respond(method: &str, target: &str, roots: &ServeArgs) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text("405 Method Not Allowed", "only GET and HEAD");
    }
    let Some(path) = resolve(target, roots) else {
        return Response::text("404 Not Found", "not found");
    };
    let path = if path.is_dir() {
        path.join("index.html")
    } else {
        path
    };
    match std::fs::read(&path) {
        Ok(body) => Response {
            status: "200 OK",
            content_type: mime_type(&path),
            body,
        },
        Err(_) => Response::text("404 Not Found", &format!("{target}: not found")),
    }
}

/// The file a request path names, or None for paths that leave the roots.
fn resolve(target: &str, roots: &ServeArgs) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = percent_decode(path)?;
    let rel = path.strip_prefix('/')?;
    let (root, rest) = match rel.strip_prefix("models/") {
        Some(rest) => (&roots.models, rest),
        None if rel == "models" => (&roots.models, ""),
        None => (&roots.web, rel),
    };
    let rest = Path::new(rest);
    // Only plain names: no `..`, no absolute parts, no hidden files.
    for c in rest.components() {
        match c {
            Component::Normal(name) if !name.to_string_lossy().starts_with('.') => {}
            _ => return None,
        }
    }
    Some(root.join(rest))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Content types browsers insist on: module scripts need a JavaScript type and
/// `WebAssembly.instantiateStreaming` needs application/wasm.
fn mime_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "md" | "csv" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> ServeArgs {
        ServeArgs {
            port: 0,
            web: PathBuf::from("w"),
            models: PathBuf::from("m"),
        }
    }

    #[test]
    fn paths_map_to_the_two_roots_and_never_leave_them() {
        let r = roots();
        assert_eq!(resolve("/", &r), Some(PathBuf::from("w/")));
        assert_eq!(
            resolve("/pkg/walsh.js?v=1", &r),
            Some(PathBuf::from("w/pkg/walsh.js"))
        );
        assert_eq!(
            resolve("/models/shakespeare-hadamard/config.json", &r),
            Some(PathBuf::from("m/shakespeare-hadamard/config.json"))
        );
        assert_eq!(resolve("/a%20b.txt", &r), Some(PathBuf::from("w/a b.txt")));
        for bad in [
            "/../Cargo.toml",
            "/models/../src/main.rs",
            "/%2e%2e/x",
            "/.git/config",
            "x",
            "/%zz",
        ] {
            assert_eq!(resolve(bad, &r), None, "{bad}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(mime_type(Path::new("a/walsh_bg.wasm")), "application/wasm");
        assert!(mime_type(Path::new("main.js")).starts_with("text/javascript"));
        assert_eq!(
            mime_type(Path::new("model.safetensors")),
            "application/octet-stream"
        );
    }
}
