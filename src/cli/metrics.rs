//! `GET /metrics` of `walsh serve --model`: counters, gauges and histograms in
//! Prometheus's text exposition format (version 0.0.4), and the one log line per API
//! request on stderr.
//!
//! What is counted, and where:
//! - requests by path and status, when a response is complete (a stream: at its end);
//! - prompt tokens when a request is admitted, generated tokens as the engine makes them;
//! - the waiting queue and the running batch, set by the engine thread after each round;
//! - time to first token (from the request's arrival to its first token reaching the
//!   handler) and the gaps between later tokens, as the handler receives them. The engine
//!   hands tokens over once per decode chunk, so inter-token gaps are near zero inside a
//!   chunk and about a chunk's time between chunks: what a client sees.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram over [`LATENCY_BOUNDS`].
#[derive(Default)]
struct Histogram {
    /// Observations at or below each bound (not yet cumulative).
    counts: [u64; LATENCY_BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = LATENCY_BOUNDS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BOUNDS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// The server's metrics, shared by the handlers and the engine thread.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    waiting: AtomicU64,
    running: AtomicU64,
    max_batch: u64,
    first_token: Mutex<Histogram>,
    inter_token: Mutex<Histogram>,
}

impl Metrics {
    pub fn new(max_batch: usize) -> Self {
        Self {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            max_batch: max_batch as u64,
            first_token: Mutex::default(),
            inter_token: Mutex::default(),
        }
    }

    pub fn admitted(&self, prompt_tokens: usize) {
        self.prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    }

    pub fn generated(&self, tokens: usize) {
        self.generated_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// The engine's queue and batch after a round.
    pub fn occupancy(&self, waiting: usize, running: usize) {
        self.waiting.store(waiting as u64, Ordering::Relaxed);
        self.running.store(running as u64, Ordering::Relaxed);
    }

    fn answered(&self, path: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((path.to_string(), status)).or_default() += 1;
    }

    fn observe(histogram: &Mutex<Histogram>, seconds: f64) {
        histogram
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(seconds);
    }

    /// The text `GET /metrics` answers.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out += "# HELP walsh_requests_total API requests answered, by path and HTTP status.\n\
                # TYPE walsh_requests_total counter\n";
        for ((path, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let path = path.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "walsh_requests_total{{path=\"{path}\",status=\"{status}\"}} {n}"
            );
        }
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        scalar(
            &mut out,
            "walsh_prompt_tokens_total",
            "counter",
            "Prompt tokens of admitted requests.",
            load(&self.prompt_tokens),
        );
        scalar(
            &mut out,
            "walsh_generation_tokens_total",
            "counter",
            "Tokens generated.",
            load(&self.generated_tokens),
        );
        scalar(
            &mut out,
            "walsh_queue_waiting",
            "gauge",
            "Requests waiting for a place in the batch.",
            load(&self.waiting),
        );
        scalar(
            &mut out,
            "walsh_batch_running",
            "gauge",
            "Sequences in the decoder's batch.",
            load(&self.running),
        );
        scalar(
            &mut out,
            "walsh_batch_capacity",
            "gauge",
            "Sequences the batch holds at most (--max-batch).",
            self.max_batch,
        );
        for (histogram, name, help) in [
            (
                &self.first_token,
                "walsh_time_to_first_token_seconds",
                "From a request's arrival to its first token.",
            ),
            (
                &self.inter_token,
                "walsh_inter_token_latency_seconds",
                "Between a request's consecutive tokens, as its handler receives them.",
            ),
        ] {
            let histogram = histogram.lock().unwrap_or_else(|e| e.into_inner());
            histogram.render(&mut out, name, help);
        }
        out
    }
}

/// One API request: its log line and its share of the metrics.
#[derive(Clone)]
pub struct RequestLog {
    method: String,
    path: String,
    start: Instant,
    last_token: Option<Instant>,
}

impl RequestLog {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_string(),
            path: path.to_string(),
            start: Instant::now(),
            last_token: None,
        }
    }

    /// A token of this request reached its handler.
    pub fn token(&mut self, metrics: &Metrics) {
        let now = Instant::now();
        let (histogram, since) = match self.last_token {
            None => (&metrics.first_token, self.start),
            Some(last) => (&metrics.inter_token, last),
        };
        Metrics::observe(histogram, now.duration_since(since).as_secs_f64());
        self.last_token = Some(now);
    }

    /// The line logged when the response is complete: method, path, status, tokens, ms.
    pub fn line(&self, status: u16, tokens: Option<(usize, usize)>, note: &str) -> String {
        let tokens = tokens.map_or(String::new(), |(prompt, completion)| {
            format!(" prompt_tokens={prompt} completion_tokens={completion}")
        });
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        };
        format!(
            "walsh: {} {} {status}{tokens} {:.1} ms{note}",
            self.method,
            self.path,
            self.start.elapsed().as_secs_f64() * 1e3
        )
    }

    /// Counts the response and logs its line on stderr.
    pub fn finish(
        &self,
        metrics: &Metrics,
        status: u16,
        tokens: Option<(usize, usize)>,
        note: &str,
    ) {
        metrics.answered(&self.path, status);
        eprintln!("{}", self.line(status, tokens, note));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (with its labels) in a rendered exposition.
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
    }

    #[test]
    fn the_exposition_counts_what_happened() {
        let m = Metrics::new(16);
        m.admitted(12);
        m.admitted(3);
        m.generated(40);
        m.occupancy(2, 16);
        let mut a = RequestLog::new("POST", "/v1/completions");
        a.token(&m);
        a.token(&m);
        a.token(&m);
        a.finish(&m, 200, Some((12, 3)), "");
        RequestLog::new("POST", "/v1/completions").finish(&m, 400, None, "");
        RequestLog::new("POST", "/v1/completions").finish(&m, 200, None, "");
        let text = m.render();
        let requests = "walsh_requests_total{path=\"/v1/completions\",status=";
        assert_eq!(sample(&text, &format!("{requests}\"200\"}}")), 2.0);
        assert_eq!(sample(&text, &format!("{requests}\"400\"}}")), 1.0);
        assert_eq!(sample(&text, "walsh_prompt_tokens_total"), 15.0);
        assert_eq!(sample(&text, "walsh_generation_tokens_total"), 40.0);
        assert_eq!(sample(&text, "walsh_queue_waiting"), 2.0);
        assert_eq!(sample(&text, "walsh_batch_running"), 16.0);
        assert_eq!(sample(&text, "walsh_batch_capacity"), 16.0);
        // One first token and two gaps; every observation is under 30 s, and the
        // buckets are cumulative up to +Inf.
        let ttft = "walsh_time_to_first_token_seconds";
        assert_eq!(sample(&text, &format!("{ttft}_count")), 1.0);
        assert_eq!(sample(&text, &format!("{ttft}_bucket{{le=\"30\"}}")), 1.0);
        let itl = "walsh_inter_token_latency_seconds";
        assert_eq!(sample(&text, &format!("{itl}_count")), 2.0);
        assert_eq!(sample(&text, &format!("{itl}_bucket{{le=\"+Inf\"}}")), 2.0);
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{itl}_bucket")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        // Every sample line is `name{labels} value` or `name value`; every family has
        // HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(
            text.matches("# HELP ").count(),
            text.matches("# TYPE ").count()
        );
    }

    #[test]
    fn the_log_line_names_method_path_status_tokens_and_time() {
        let log = RequestLog::new("POST", "/v1/completions");
        let line = log.line(200, Some((5, 7)), "client gone");
        assert!(
            line.starts_with(
                "walsh: POST /v1/completions 200 prompt_tokens=5 completion_tokens=7 "
            ),
            "{line}"
        );
        assert!(line.ends_with(" ms (client gone)"), "{line}");
        let line = log.line(404, None, "");
        assert!(
            line.starts_with("walsh: POST /v1/completions 404 "),
            "{line}"
        );
        assert!(line.ends_with(" ms"), "{line}");
    }
}
