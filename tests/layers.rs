//! The library's floors only point down: a module may use the floors beneath its own and
//! never one above (`docs/architecture.md#floors` says what each floor holds). The order,
//! from the bottom:
//!
//! 1. `limits`: walsh's size limits, their error and bounded file reads;
//! 2. `gpu`: adapters, devices, pipelines, buffers, recordings and their timing;
//! 3. `blocks`: the q8/q4 block format of weight matrices;
//! 4. `ops`: the kernels, each with its CPU reference;
//! 5. `gguf`: the GGUF container reader;
//! 6. `tokenizer`: byte-level, BPE and SentencePiece tokenizers;
//! 7. `model`: configs, weights, sizes, the CPU and GPU decoders, generation;
//! 8. `bench`: the benchmark suites and their reports;
//! 9. `web`: the browser API (wasm32); the `walsh` binary (`src/main.rs`, `src/cli/`)
//!    stands above everything.
//!
//! The check reads every `.rs` file under `src/` as text (comments left out): each
//! `crate::<module>` path must name the file's own floor or one beneath it, and a
//! `super::` chain long enough to climb out of the file's top-level module (which would
//! reach the crate root without saying `crate::`) is refused as well.

use std::path::{Path, PathBuf};

/// The floors, bottom first.
const FLOORS: [&str; 9] = [
    "limits",
    "gpu",
    "blocks",
    "ops",
    "gguf",
    "tokenizer",
    "model",
    "bench",
    "web",
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| *f == module)
}

/// The module path of a file under `src/`: `ops/hadamard/cpu.rs` -> [ops, hadamard, cpu],
/// `ops/mod.rs` -> [ops]; `None` for the crate roots and the binary.
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        None | Some("lib" | "main" | "cli") => None,
        _ => Some(parts),
    }
}

/// The upward or root-climbing references in one file's text, as messages.
fn violations(file: &str, module: &[String], text: &str) -> Vec<String> {
    let Some(own) = floor(&module[0]) else {
        return vec![format!(
            "{file}: top-level module `{}` has no floor in tests/layers.rs",
            module[0]
        )];
    };
    let mut out = Vec::new();
    // Inline modules (`mod tests {`) open at these brace depths: each adds a `super::`.
    let (mut depth, mut inline) = (0usize, Vec::new());
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let words: Vec<&str> = code.split_whitespace().collect();
        if matches!(
            words[..],
            ["mod", _, "{"] | ["pub" | "pub(crate)", "mod", _, "{"]
        ) {
            inline.push(depth);
        }
        depth += code.matches('{').count();
        depth = depth.saturating_sub(code.matches('}').count());
        while inline.last().is_some_and(|&d| depth <= d) {
            inline.pop();
        }
        for (at, _) in code.match_indices("crate::") {
            // `walsh_crate::` or similar identifiers ending in `crate` are not the keyword.
            if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let target: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            match floor(&target) {
                Some(f) if f <= own => {}
                Some(_) => out.push(format!(
                    "{file}:{}: `{}` (floor {}) uses `crate::{target}`, a floor above: {}",
                    i + 1,
                    module[0],
                    own + 1,
                    line.trim()
                )),
                // Items of the crate root (none today) or the `walsh` binary's own paths.
                None => out.push(format!(
                    "{file}:{}: `crate::{target}` is not a floor of tests/layers.rs",
                    i + 1
                )),
            }
        }
        // `super::` chains: a file at depth d (ops/hadamard/cpu.rs has d = 3) leaves its
        // top-level module with d `super::`s, plus one per inline module it is in.
        let mut rest = code;
        while let Some(at) = rest.find("super::") {
            rest = &rest[at..];
            let mut chain = 0;
            while let Some(tail) = rest.strip_prefix("super::") {
                chain += 1;
                rest = tail;
            }
            if chain >= module.len() + inline.len() {
                out.push(format!(
                    "{file}:{}: {chain} `super::`s climb out of `{}`: name the floor with \
                     `crate::`",
                    i + 1,
                    module[0]
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_its_floor_and_those_beneath() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut checked = 0;
    let mut found = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&src).unwrap();
        let Some(module) = module_path(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        found.extend(violations(&rel.display().to_string(), &module, &text));
        checked += 1;
    }
    assert!(checked > 40, "only {checked} files under src/");
    assert!(found.is_empty(), "upward imports:\n{}", found.join("\n"));
}

/// The check itself catches what it is for (and lets the rest through).
#[test]
fn the_check_refuses_upward_and_root_climbing_paths() {
    let ops = ["ops".to_string(), "matmul".to_string()];
    assert!(violations("x.rs", &ops, "use crate::gpu::Gpu;\nuse crate::ops::copy;").is_empty());
    let up = violations("x.rs", &ops, "use crate::model::quant::QuantMatrix;");
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].contains("x.rs:1") && up[0].contains("crate::model"),
        "{up:?}"
    );
    // In a comment it is prose, not an import.
    assert!(violations("x.rs", &ops, "// see crate::model::sizes").is_empty());
    let cpu = ["ops".to_string(), "hadamard".to_string(), "cpu".to_string()];
    assert!(violations("x.rs", &cpu, "use super::super::construct::X;").is_empty());
    let climb = violations("x.rs", &cpu, "use super::super::super::bench::X;");
    assert_eq!(climb.len(), 1, "{climb:?}");
    // Inside an inline module one more is needed to climb out; after it, not.
    let tests = "mod tests {\n    use super::super::super::x;\n}\nuse super::super::super::y;";
    let climb = violations("x.rs", &cpu, tests);
    assert_eq!(climb.len(), 1, "{climb:?}");
    assert!(climb[0].starts_with("x.rs:4"), "{climb:?}");
    let unknown = violations("x.rs", &["serve".to_string()], "");
    assert!(unknown[0].contains("no floor"), "{unknown:?}");
}
