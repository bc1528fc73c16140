//! The command lines the documentation shows must parse: every `walsh` invocation in a
//! fenced code block of `README.md`, `docs/*.md` and `bench-results/README.md` goes through
//! the binary's own clap parser, and every `cargo xtask TASK` names a task xtask knows.
//! A renamed or removed flag then fails `cargo test` with the file, line and command.
//!
//! How commands are found (simple on purpose; see `commands` and `words`):
//! - only lines inside ``` fences count; a line ending in `\` continues on the next, and
//!   the command is reported at its first line;
//! - a leading `$ ` prompt is dropped; words are split as a POSIX shell splits them for
//!   '...', "..." and `\`, without expanding anything; a word starting with `#` starts a
//!   comment; a line holding `$(` or a backtick is skipped (its words are not known
//!   before the shell runs);
//! - `|`, `&&`, `||`, `;` and `&` separate commands, each checked on its own; a
//!   redirection (`>`, `>>`, `<`, `2>`) and its target are dropped;
//! - leading `NAME=value` words (environment settings) are dropped;
//! - walsh runs as `walsh ...`, `path/to/walsh ...`, or `cargo run [--release] [-- ...]`
//!   (without `-p`/`--package`/`--bin` naming another package); `cargo run --release`
//!   alone is walsh with no arguments;
//! - `cargo xtask TASK` is checked against the task names in xtask's `USAGE` text.
//!
//! Placeholders such as `[--json]` or `DIR` in a fenced block are not valid commands:
//! write a real example there and put the synopsis in prose.

use std::path::{Path, PathBuf};

use clap::Parser;

/// One command found in a file: where, what it said, and its words.
struct Found {
    file: PathBuf,
    line: usize,
    text: String,
    words: Vec<String>,
}

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("bench-results/README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// Every command of the fenced code blocks of `text`, with its line number (1-based).
fn commands(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            pending = None;
            continue;
        }
        if !fenced {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            pending = Some((start, joined));
            continue;
        }
        joined.push_str(line);
        let trimmed = joined.trim();
        let trimmed = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        if !trimmed.is_empty() {
            out.push((start, trimmed.to_string()));
        }
    }
    out
}

/// A word or a shell operator.
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Op(String),
}

/// Splits a line as the shell would (quotes and backslashes, no expansion); stops at a
/// comment. `None` for a line whose words depend on running something (`$(`, backticks).
fn tokens(line: &str) -> Option<Vec<Token>> {
    if line.contains("$(") || line.contains('`') {
        return None;
    }
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    w.push(q);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$')) => {
                            w.push(chars.next().expect("peeked"));
                        }
                        _ => w.push(q),
                    }
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    word.get_or_insert_with(String::new).push(n);
                }
            }
            '#' if word.is_none() => break,
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    out.push(Token::Word(w));
                }
            }
            '|' | '&' | ';' | '<' | '>' => {
                // `2>`: the digits before a redirection are its file descriptor.
                if let Some(w) = word.take() {
                    let fd = matches!(c, '<' | '>') && w.chars().all(|d| d.is_ascii_digit());
                    if !fd {
                        out.push(Token::Word(w));
                    }
                }
                let mut op = c.to_string();
                while let Some(&n) = chars.peek() {
                    if !matches!(n, '|' | '&' | '<' | '>') {
                        break;
                    }
                    op.push(n);
                    chars.next();
                }
                out.push(Token::Op(op));
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        out.push(Token::Word(w));
    }
    Some(out)
}

/// The simple commands of a line: split at `|`, `&&`, `||`, `;`, `&`, with redirections
/// and leading `NAME=value` settings dropped.
fn words(line: &str) -> Vec<Vec<String>> {
    let Some(tokens) = tokens(line) else {
        return Vec::new();
    };
    let mut commands = vec![Vec::new()];
    let mut skip_target = false;
    for t in tokens {
        match t {
            Token::Op(op) if op.starts_with(['<', '>']) => skip_target = true,
            Token::Op(_) => commands.push(Vec::new()),
            Token::Word(w) => {
                if std::mem::take(&mut skip_target) {
                    continue;
                }
                let current = commands.last_mut().expect("never empty");
                let setting = w.split_once('=').is_some_and(|(name, _)| is_env_name(name));
                if !(current.is_empty() && setting) {
                    current.push(w);
                }
            }
        }
    }
    commands.retain(|c| !c.is_empty());
    commands
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What a simple command runs, as far as this test cares.
#[derive(Debug, PartialEq)]
enum Runs {
    /// walsh, with these arguments (without the program name).
    Walsh(Vec<String>),
    /// `cargo xtask`, with its task name if any.
    Xtask(Option<String>),
    Other,
}

fn classify(words: &[String]) -> Runs {
    let program = words[0].as_str();
    if program == "walsh" || program.ends_with("/walsh") {
        return Runs::Walsh(words[1..].to_vec());
    }
    if program != "cargo" {
        return Runs::Other;
    }
    match words.get(1).map(String::as_str) {
        Some("xtask") => Runs::Xtask(words.get(2).cloned()),
        Some("run") => {
            let split = words.iter().position(|w| w == "--").unwrap_or(words.len());
            let cargo_args = &words[2..split];
            let other = cargo_args.windows(2).any(|p| {
                matches!(p[0].as_str(), "-p" | "--package" | "--bin" | "--example")
                    && p[1] != "walsh"
            }) || cargo_args
                .iter()
                .any(|a| a.starts_with("--package=") || a.starts_with("--bin="));
            if other {
                return Runs::Other;
            }
            Runs::Walsh(words.get(split + 1..).unwrap_or_default().to_vec())
        }
        _ => Runs::Other,
    }
}

/// The task names of xtask's `USAGE` text (`  name ...` lines after `tasks:`).
fn xtask_tasks() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("xtask/src/main.rs");
    let source = std::fs::read_to_string(&path).expect("xtask/src/main.rs is readable");
    let usage = source
        .split_once("const USAGE: &str = \"")
        .expect("xtask's USAGE constant")
        .1;
    let usage = &usage[..usage.find("\";").expect("end of USAGE")];
    let tasks = usage.split_once("tasks:").expect("a tasks: list").1;
    tasks
        .lines()
        .filter_map(|l| {
            let name = l.strip_prefix("  ")?.split_whitespace().next()?;
            let starts_name = !l[2..].starts_with(' ');
            (starts_name
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .then(|| name.to_string())
        })
        .collect()
}

fn found_in(file: &Path) -> Vec<Found> {
    let text = std::fs::read_to_string(file).expect("documentation file is readable");
    commands(&text)
        .into_iter()
        .flat_map(|(line, text)| {
            words(&text).into_iter().map(move |words| Found {
                file: file.to_path_buf(),
                line,
                text: text.clone(),
                words,
            })
        })
        .collect()
}

/// Checks one command; the message on failure names where it is and why.
fn check(found: &Found, tasks: &[String]) -> Result<bool, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let place = format!(
        "{}:{}: `{}`",
        found
            .file
            .strip_prefix(root)
            .unwrap_or(&found.file)
            .display(),
        found.line,
        found.text
    );
    match classify(&found.words) {
        Runs::Walsh(args) => {
            let argv = std::iter::once("walsh".to_string()).chain(args);
            match crate::Cli::try_parse_from(argv) {
                Ok(_) => Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayHelp
                            | clap::error::ErrorKind::DisplayVersion
                    ) =>
                {
                    Ok(true)
                }
                Err(e) => {
                    let why = e.to_string();
                    let why = why.lines().next().unwrap_or_default();
                    Err(format!("{place} does not parse: {why}"))
                }
            }
        }
        Runs::Xtask(Some(task)) if !tasks.contains(&task) => Err(format!(
            "{place}: xtask has no task `{task}` (its USAGE lists {})",
            tasks.join(", ")
        )),
        Runs::Xtask(_) => Ok(true),
        Runs::Other => Ok(false),
    }
}

#[test]
fn readme_and_docs_commands_parse() {
    let tasks = xtask_tasks();
    assert!(
        tasks.contains(&"test".to_string()),
        "xtask tasks: {tasks:?}"
    );
    let (mut checked, mut failures) = (0, Vec::new());
    for file in docs() {
        for found in found_in(&file) {
            match check(&found, &tasks) {
                Ok(counted) => checked += usize::from(counted),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} documented command(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The README's two set-up commands alone are 2; the docs show dozens.
    assert!(
        checked > 20,
        "only {checked} commands found: is the extraction broken?"
    );
}

#[test]
fn readme_starts_with_the_two_setup_commands() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = found_in(&root.join("README.md"));
    let first: Vec<String> = found.iter().take(2).map(|f| f.words.join(" ")).collect();
    assert_eq!(first, ["cargo run --release", "cargo xtask test"]);
}

#[test]
fn readme_extraction_joins_splits_and_strips() {
    let text = "prose walsh adapters\n```sh\n$ WALSH_ADAPTER=1 cargo run --release   # comment\n\
                walsh --adapter gl \\\n    wht --n 576 | head -3 > out.txt 2>&1\n\
                cargo run --release -p walsh-train -- report\n\
                echo $(walsh adapters)\n\
                target/release/walsh generate --prompt \"To be # not a comment\"\n```\n\
                walsh not-in-a-block\n";
    let found: Vec<(usize, Vec<Vec<String>>)> = commands(text)
        .into_iter()
        .map(|(line, text)| (line, words(&text)))
        .collect();
    let w = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![
            (3, vec![w(&["cargo", "run", "--release"])]),
            (
                4,
                vec![
                    w(&["walsh", "--adapter", "gl", "wht", "--n", "576"]),
                    w(&["head", "-3"])
                ]
            ),
            (
                6,
                vec![w(&[
                    "cargo",
                    "run",
                    "--release",
                    "-p",
                    "walsh-train",
                    "--",
                    "report"
                ])]
            ),
            (7, vec![]),
            (
                8,
                vec![w(&[
                    "target/release/walsh",
                    "generate",
                    "--prompt",
                    "To be # not a comment"
                ])]
            ),
        ]
    );
    assert_eq!(classify(&found[0].1[0]), Runs::Walsh(vec![]));
    assert_eq!(classify(&found[2].1[0]), Runs::Other);
    assert_eq!(
        classify(&w(&["cargo", "xtask", "e2e"])),
        Runs::Xtask(Some("e2e".into()))
    );
    let tasks = xtask_tasks();
    for task in ["test", "web", "e2e", "web-bench", "fuzz", "page-vs-native"] {
        assert!(tasks.contains(&task.to_string()), "{task} in {tasks:?}");
    }
    let bad = Found {
        file: PathBuf::from("docs/x.md"),
        line: 9,
        text: "walsh generate --no-such-flag".into(),
        words: w(&["walsh", "generate", "--no-such-flag"]),
    };
    let e = check(&bad, &tasks).unwrap_err();
    assert!(
        e.starts_with("docs/x.md:9: `walsh generate --no-such-flag` does not parse"),
        "{e}"
    );
}
