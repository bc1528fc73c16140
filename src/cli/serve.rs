//! `walsh serve`: the browser page (`web/` at `/`) and the models (`models/` at
//! `/models/`) over HTTP/1.1, on 127.0.0.1 unless `--host` says otherwise.
//!
//! Built on hyper (the tokio project's HTTP implementation, under axum, reqwest and most
//! of the Rust HTTP ecosystem) with tower-http's `ServeFile` for the file semantics:
//! `Range` (206, 416), conditional requests (`ETag`, `Last-Modified`, 304, 412), HEAD,
//! and `CompressionLayer` for gzip. Two roots need no router, so there is no framework on
//! top. What this file adds is the policy a local server needs:
//!
//! - every path is resolved by hand and canonicalized, so neither `..` (however spelled)
//!   nor a symbolic link leads out of the two roots;
//! - the `Host` header must be `localhost`, an IP address or a name given with
//!   `--allow-host`: a web page cannot reach this server through DNS rebinding (that
//!   needs a host name the attacker controls);
//! - request heads are bounded ([`MAX_HEAD_BYTES`], answered with 431), a connection
//!   that sends no request head, or makes no progress reading or writing, for
//!   `--idle-timeout` seconds is closed, and at most `--max-connections` are served at
//!   once (the rest wait in the listen backlog).

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{Predicate, SizeAbove};
use tower_http::services::ServeFile;
use walsh::ops::attention::KvFormat;

use super::api::{self, Api, ApiOptions};

/// Largest request head (request line and headers) accepted; a longer one gets 431 and
/// the connection is closed, so a client cannot make the server buffer more than this.
pub const MAX_HEAD_BYTES: usize = 16 << 10;

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// IP address to listen on. The default, 127.0.0.1, serves this machine only; an
    /// address that is not loopback (e.g. 0.0.0.0) exposes web/ and models/ to the
    /// network (walsh warns).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,
    /// Port; 0 picks a free one (the URL is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The page's directory (built with `cargo xtask web`).
    #[arg(long, default_value = "web")]
    pub web: PathBuf,
    /// The models directory, served under /models/.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// A host name, besides localhost and IP addresses, that requests may name in their
    /// Host header (repeatable). Others get 403: this is what stops DNS rebinding.
    #[arg(long)]
    pub allow_host: Vec<String>,
    /// Connections served at once; more wait until one closes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_connections: u32,
    /// Seconds a connection may go without a complete request head, or without any
    /// progress reading or writing, before it is closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout: u64,
    /// Serve OpenAI's completions API for this model under /v1/ (`/v1/models`,
    /// `/v1/completions`); without it only the page and the models are served.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where the API's decoder runs.
    #[arg(long, value_enum, default_value_t = super::run::Device::Gpu)]
    pub device: super::run::Device,
    /// The API decoder's KV cache format.
    #[arg(long, default_value_t = KvFormat::default())]
    pub kv_cache: KvFormat,
    /// Requests decoded together at most (sequence slots of the decoder). Default: on a
    /// GPU the most, up to 64, whose KV caches fit the adapter's buffer limits at the
    /// model's context; 16 on the CPU. Any value keeps a completion the same alone or
    /// beside others (docs/serving.md).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_batch: Option<u32>,
    /// Requests waiting for a slot at most; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub max_queue: u32,
    /// Require `Authorization: Bearer KEY` on /v1/ (401 otherwise).
    #[arg(long, env = "WALSH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// What every connection shares: the canonical roots, the Host policy and the API.
struct Site {
    web: PathBuf,
    /// None when the models directory does not exist: /models/ is then all 404.
    models: Option<PathBuf>,
    allowed_hosts: Vec<String>,
    /// With `--model`: the completions API.
    api: Option<Api>,
}

pub fn serve_cmd(args: &ServeArgs, adapter: &str) -> Result<()> {
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
    let web = args
        .web
        .canonicalize()
        .with_context(|| format!("resolving {}", args.web.display()))?;
    let models = args.models.canonicalize().ok();
    if models.is_none() {
        eprintln!(
            "walsh: {} does not exist: /models/ will be empty",
            args.models.display()
        );
    }
    if let Some(warning) = exposure_warning(args.host) {
        eprintln!("walsh: {warning}");
    }
    let api = match &args.model {
        None => None,
        Some(dir) => {
            let (model, tokenizer) = super::run::load_model_and_tokenizer(Some(dir))?;
            let name = dir
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned());
            let options = ApiOptions {
                device: args.device,
                adapter: adapter.to_string(),
                kv: args.kv_cache,
                max_batch: args.max_batch.map(|n| n as usize),
                max_queue: args.max_queue as usize,
                api_key: args.api_key.clone(),
            };
            Some(Api::start(model, tokenizer, name, options)?)
        }
    };
    let site = Arc::new(Site {
        web,
        models,
        api,
        allowed_hosts: args
            .allow_host
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    });

    let listener = std::net::TcpListener::bind((args.host, args.port))
        .with_context(|| format!("listening on {}", SocketAddr::new(args.host, args.port)))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    // Scripts read this line to find the port when they pass --port 0.
    println!(
        "serving http://{addr}/ (web: {}, models: {}); Ctrl-C stops",
        args.web.display(),
        args.models.display()
    );
    std::io::stdout().flush()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(accept_loop(
        listener,
        site,
        args.max_connections as usize,
        Duration::from_secs(args.idle_timeout),
    ))
}

/// The warning printed when the server listens beyond this machine, or None.
fn exposure_warning(host: IpAddr) -> Option<String> {
    (!host.is_loopback()).then(|| {
        format!(
            "listening on {host}, not a loopback address: every machine that can reach this \
             one can read the served directories (there is no authentication)"
        )
    })
}

async fn accept_loop(
    listener: std::net::TcpListener,
    site: Arc<Site>,
    max_connections: usize,
    idle: Duration,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        // Take a slot before accepting: beyond the limit, clients wait in the backlog.
        let slot = slots.clone().acquire_owned().await?;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically out of file descriptors: wait for some to close.
                eprintln!("walsh serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let site = site.clone();
        let counter = Arc::new(AtomicUsize::new(0));
        let working = counter.clone();
        tokio::spawn(async move {
            let service = ServiceBuilder::new()
                .map_response(weaken_etag_when_encoded)
                .layer(
                    CompressionLayer::new().compress_when(SizeAbove::new(1024).and(
                        compressible
                            as fn(
                                StatusCode,
                                Version,
                                &HeaderMap,
                                &hyper::http::Extensions,
                            ) -> bool,
                    )),
                )
                .service_fn(move |req| {
                    // The idle timeout waits while the response is being made.
                    let busy = Busy::enter(&working);
                    let site = site.clone();
                    async move {
                        let response = respond(site, req).await;
                        drop(busy);
                        response
                    }
                });
            let io = TokioIo::new(Stalling::new(stream, idle, counter));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle)
                .max_header_size(MAX_HEAD_BYTES)
                .max_buf_size(4 * MAX_HEAD_BYTES)
                .serve_connection(io, TowerToHyperService::new(service));
            // Errors here are clients going away or timing out: nothing to report.
            let _ = connection.await;
            drop(slot);
        });
    }
}

pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body of these bytes, whole.
pub(crate) fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full_body(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn respond(site: Arc<Site>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut req = req;
    if api::is_api_path(req.uri().path()) {
        let mut response = match (check_host(&site, &req), &site.api) {
            (Err(refusal), _) => refusal,
            (Ok(()), None) => api::no_model(),
            (Ok(()), Some(api)) => api.handle(req).await,
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let mut response = match check_request(&site, &req) {
        Err(refusal) => refusal,
        Ok(path) => {
            // tower-http does not evaluate If-Range: a range of a file that changed since
            // the client's copy would corrupt it, so send the whole file instead.
            if req.headers().contains_key(header::RANGE)
                && let Some(if_range) = req.headers().get(header::IF_RANGE).cloned()
                && !if_range_holds(&path, &if_range).await
            {
                req.headers_mut().remove(header::RANGE);
            }
            let mime = mime_type(&path)
                .parse()
                .unwrap_or(mime::APPLICATION_OCTET_STREAM);
            match ServeFile::new_with_mime(&path, &mime).oneshot(req).await {
                Ok(response) => response.map(|body| body.boxed_unsync()),
                Err(never) => match never {},
            }
        }
    };
    let headers = response.headers_mut();
    // Revalidate every time (the page changes under development), never sniff types.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// Whether an If-Range validator still matches the file: an entity tag must equal its
/// (strong) ETag, a date its Last-Modified, as tower-http computes them.
async fn if_range_holds(path: &Path, if_range: &HeaderValue) -> bool {
    let head = Request::head("/")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("a constant request");
    let Ok(current) = ServeFile::new(path).oneshot(head).await;
    let value = if_range.as_bytes();
    let validator = if value.starts_with(b"W/") {
        return false; // weak tags never match for ranges
    } else if value.starts_with(b"\"") {
        header::ETAG
    } else {
        header::LAST_MODIFIED
    };
    current.headers().get(validator) == Some(if_range)
}

/// The file a request may read, or the response refusing it.
#[allow(clippy::result_large_err)]
fn check_request(site: &Site, req: &Request<Incoming>) -> Result<PathBuf, Response<Body>> {
    check_host(site, req)?;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Err(response);
    }
    resolve(req.uri().path(), site).ok_or_else(|| text(StatusCode::NOT_FOUND, "not found"))
}

/// Refuses a request without a Host header, or naming a host this server does not answer
/// to (what stops DNS rebinding).
#[allow(clippy::result_large_err)] // a response to send back, built once per request
fn check_host(site: &Site, req: &Request<Incoming>) -> Result<(), Response<Body>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(host) = host else {
        return Err(text(StatusCode::BAD_REQUEST, "a Host header is required"));
    };
    if !host_allowed(host, &site.allowed_hosts) {
        return Err(text(
            StatusCode::FORBIDDEN,
            &format!(
                "Host {host:?} is not served here: walsh serve answers to localhost and IP \
                 addresses (name others with --allow-host)"
            ),
        ));
    }
    Ok(())
}

/// Whether a Host header value names this server: `localhost` (and `*.localhost`, which
/// browsers resolve to loopback themselves), an IP address, or an allowed name. With or
/// without a port.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    // "[::1]:8080", "[::1]", "127.0.0.1:8080", "name:8080", "name".
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host.as_str(), |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                ""
            }
        })
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && (name == "localhost"
            || name.ends_with(".localhost")
            || name.parse::<Ipv4Addr>().is_ok()
            || allowed.iter().any(|a| a == name))
}

/// The canonical path of the file a request path names (a directory gives its
/// index.html), or None when it does not exist or is not inside its root, however the
/// path is spelled and wherever symbolic links point.
fn resolve(path: &str, site: &Site) -> Option<PathBuf> {
    let decoded = percent_decode(path)?;
    let rel = decoded.strip_prefix('/')?;
    let (root, rest) = match rel.strip_prefix("models") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => (site.models.as_ref()?, rest),
        _ => (&site.web, rel),
    };
    let mut candidate = root.clone();
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        // Plain names only: no `..` or `.`, no hidden files, nothing a platform could read
        // as a separator, drive or device.
        if part.starts_with('.') || part.contains(['\\', ':', '\0']) {
            return None;
        }
        candidate.push(part);
    }
    let inside = |p: &Path| -> Option<PathBuf> {
        let real = p.canonicalize().ok()?;
        real.starts_with(root).then_some(real)
    };
    let real = inside(&candidate)?;
    let file = if real.is_dir() {
        inside(&real.join("index.html"))?
    } else {
        real
    };
    file.is_file().then_some(file)
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

/// Gzip only whole (200) responses of types that shrink: the page, its scripts and the
/// wasm module. Model weights stay as they are: they barely compress, and the page's
/// download progress needs their Content-Length. (Ranges are never compressed.)
fn compressible(
    status: StatusCode,
    _: Version,
    headers: &HeaderMap,
    _: &hyper::http::Extensions,
) -> bool {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Server-sent events are not compressed: a compressor holds them back.
    status == StatusCode::OK
        && !kind.starts_with("text/event-stream")
        && (kind.starts_with("text/")
            || kind.starts_with("application/wasm")
            || kind.starts_with("application/json")
            || kind.starts_with("image/svg+xml"))
}

/// A gzipped body is a different representation from the file, so its ETag may only be
/// weak: `If-None-Match` still revalidates it, `If-Range` (which needs a strong match)
/// never mixes the two.
fn weaken_etag_when_encoded<B>(mut response: Response<B>) -> Response<B> {
    if response.headers().contains_key(header::CONTENT_ENCODING)
        && let Some(tag) = response.headers().get(header::ETAG)
        && tag.as_bytes().starts_with(b"\"")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            response.headers_mut().insert(header::ETAG, weak);
        }
    }
    response
}

/// A socket that fails with `TimedOut` once neither a read nor a write has made progress
/// for `limit` while one of them waits: an idle keep-alive connection, or a client that
/// stops reading its response, gives its slot back.
struct Stalling<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Requests of this connection whose response is still being made (a completion):
    /// the server, not the client, is slow then, and the limit does not run.
    busy: Arc<AtomicUsize>,
}

/// A request in progress on its connection, while alive (see [`Stalling`]).
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S> Stalling<S> {
    fn new(inner: S, limit: Duration, busy: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            busy,
        }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.limit;
        self.deadline.as_mut().reset(next);
    }

    /// Pending while within the limit; the error once past it.
    fn waiting<T>(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<T>> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            self.progressed();
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalling<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => this.waiting(cx),
            ready => {
                this.progressed();
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalling<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.waiting(cx),
            ready => {
                this.progressed();
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.waiting(cx),
            ready => {
                this.progressed();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.waiting(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.waiting(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A web root with a page, a subdirectory, a hidden file and links in and out, and a
    /// models root; `secret.txt` lies outside both.
    fn site() -> (tempfile::TempDir, Site) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["web/pkg", "models/m"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "web/index.html",
            "web/pkg/walsh.js",
            "web/a b.txt",
            "web/.hidden",
            "models/m/config.json",
            "secret.txt",
        ] {
            std::fs::write(root.join(f), f).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(root.join("secret.txt"), root.join("web/out.txt")).unwrap();
            symlink(root, root.join("web/up")).unwrap();
            symlink(
                root.join("models/m/config.json"),
                root.join("models/in.json"),
            )
            .unwrap();
        }
        let site = Site {
            web: root.join("web").canonicalize().unwrap(),
            models: Some(root.join("models").canonicalize().unwrap()),
            allowed_hosts: vec!["walsh.test".into()],
            api: None,
        };
        (dir, site)
    }

    #[test]
    fn paths_map_to_the_two_roots_and_never_leave_them() {
        let (dir, s) = site();
        let real = |p: &str| Some(dir.path().join(p).canonicalize().unwrap());
        assert_eq!(resolve("/", &s), real("web/index.html"));
        assert_eq!(resolve("/pkg/walsh.js", &s), real("web/pkg/walsh.js"));
        assert_eq!(resolve("//pkg//walsh.js", &s), real("web/pkg/walsh.js"));
        assert_eq!(
            resolve("/models/m/config.json", &s),
            real("models/m/config.json")
        );
        assert_eq!(resolve("/a%20b.txt", &s), real("web/a b.txt"));
        #[cfg(unix)]
        {
            // Links are followed while they stay inside their root.
            assert_eq!(resolve("/models/in.json", &s), real("models/m/config.json"));
            assert_eq!(resolve("/up/web/index.html", &s), real("web/index.html"));
        }
        for bad in [
            "/../secret.txt",
            "/models/../secret.txt",
            "/models/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/pkg/..%2f..%2fsecret.txt",
            "/..%5csecret.txt",
            "/%5c..%5csecret.txt",
            "/./index.html",
            "/.hidden",
            "/%2ehidden",
            "/out.txt",
            "/up/secret.txt",
            // A link into the other root is outside this one.
            "/up/models/m/config.json",
            "/models/m/../../secret.txt",
            "/models..%2fsecret.txt",
            "/c:%5csecret.txt",
            "/index.html%00.txt",
            "/%c0%ae%c0%ae/secret.txt",
            "/%zz",
            "/nope.js",
            "x",
            "",
        ] {
            assert_eq!(resolve(bad, &s), None, "{bad}");
        }
        // Without a models directory, /models/ is empty rather than the web root's.
        let no_models = Site { models: None, ..s };
        assert_eq!(resolve("/models/m/config.json", &no_models), None);
    }

    #[test]
    fn host_header_names_this_machine_or_an_allowed_name() {
        let allowed = vec!["walsh.test".to_string()];
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "app.localhost:8080",
            "127.0.0.1:8080",
            "192.168.1.20",
            "[::1]:8080",
            "[::1]",
            "walsh.test:8080",
            "walsh.test.",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "walsh.test.evil",
            "[::1",
            "localhost:http",
            "",
            ":8080",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn only_loopback_goes_without_a_warning() {
        assert_eq!(exposure_warning(IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
        assert_eq!(exposure_warning("::1".parse().unwrap()), None);
        let warning = exposure_warning("0.0.0.0".parse().unwrap()).unwrap();
        assert!(warning.contains("0.0.0.0") && warning.contains("every machine"));
    }

    #[test]
    fn content_types() {
        assert_eq!(mime_type(Path::new("a/walsh_bg.wasm")), "application/wasm");
        assert!(mime_type(Path::new("main.js")).starts_with("text/javascript"));
        assert_eq!(
            mime_type(Path::new("model.safetensors")),
            "application/octet-stream"
        );
        let mut h = HeaderMap::new();
        let yes = |h: &HeaderMap, s| compressible(s, Version::HTTP_11, h, &Default::default());
        for (kind, want) in [
            ("application/wasm", true),
            ("text/javascript; charset=utf-8", true),
            ("application/json", true),
            ("application/octet-stream", false),
            ("image/png", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            assert_eq!(yes(&h, StatusCode::OK), want, "{kind}");
        }
        assert!(!yes(&h, StatusCode::PARTIAL_CONTENT));
    }

    #[test]
    fn encoded_responses_get_weak_etags() {
        let tagged = || {
            let mut r = Response::new(());
            r.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"abc\""));
            r
        };
        let same = weaken_etag_when_encoded(tagged());
        assert_eq!(same.headers()[header::ETAG], "\"abc\"");
        let mut r = tagged();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(
            weaken_etag_when_encoded(r).headers()[header::ETAG],
            "W/\"abc\""
        );
    }

    /// The idle limit runs while the client is silent, and not while a response is being
    /// made (a completion can take longer than the limit).
    #[test]
    fn idle_connections_time_out_unless_a_response_is_being_made() {
        use tokio::io::AsyncReadExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let limit = Duration::from_millis(100);
            let count = Arc::new(AtomicUsize::new(0));
            // A peer that never sends: every read waits.
            let (_peer, quiet) = tokio::io::duplex(64);
            let mut conn = Stalling::new(quiet, limit, count.clone());
            let busy = Busy::enter(&count);
            let mut buf = [0u8; 8];
            let waited = tokio::time::timeout(4 * limit, conn.read(&mut buf)).await;
            assert!(waited.is_err(), "timed out while busy: {waited:?}");
            drop(busy);
            let started = Instant::now();
            let err = conn.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
            assert!(started.elapsed() <= 2 * limit, "{:?}", started.elapsed());
        });
    }
}
