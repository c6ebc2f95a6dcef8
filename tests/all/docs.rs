//! The documentation's commands, run. Every ```sh block in README.md and docs/*.md says,
//! on the line before it, how it is tested:
//!
//! - `<!-- doc-test: run -->`: run here, line by line in one shell, against the README's
//!   local cluster (`a@127.0.0.1`, `b@127.0.0.2`, `c@127.0.0.3` from config/local.toml,
//!   this build's binary as `$B` and `wasmnode`, the cookie exported). A line whose
//!   comment starts with `→` must print that text (`# → 1`); every line must succeed,
//!   except one whose comment says `→ error:` (it must fail, printing that).
//! - `<!-- doc-test: by TEST -->`: what the block does is what the named test does (it
//!   needs Docker, a build, or a Kubernetes cluster); the test must exist.
//! - `<!-- doc-test: not run: REASON -->`: says why no test can run it here.
//!
//! A block with none of these fails the test, naming the file and line.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

/// A shell block: where it starts, its marker, its lines.
struct Block {
    at: String,
    marker: Option<String>,
    lines: Vec<String>,
}

fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start() == "```sh" {
            let marker = (i > 0)
                .then(|| lines[i - 1].trim())
                .and_then(|l| l.strip_prefix("<!-- doc-test:"))
                .and_then(|l| l.strip_suffix("-->"))
                .map(|m| m.trim().to_string());
            let at = format!("{}:{}", file.strip_prefix(repo_root()).unwrap_or(file).display(), i + 1);
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim_start() != "```" {
                body.push(lines[i].to_string());
                i += 1;
            }
            out.push(Block { at, marker, lines: body });
        }
        i += 1;
    }
    out
}

fn doc_files() -> Vec<std::path::PathBuf> {
    let mut files = vec![repo_root().join("README.md")];
    let mut docs: Vec<_> =
        std::fs::read_dir(repo_root().join("docs")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    docs.sort();
    files.extend(docs);
    files
}

/// A line's command and its comment (after ` # `), if any.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    match line.split_once(" # ") {
        Some((command, comment)) => (command.trim_end(), Some(comment.trim())),
        None => (line, None),
    }
}

/// What a line must print, from its `# → TEXT` comment.
fn expected(line: &str) -> Option<String> {
    Some(split_comment(line).1?.strip_prefix('→')?.trim().to_string())
}

/// Every block says how it is tested, and a test it names exists.
#[test]
fn every_shell_block_in_the_docs_says_how_it_is_tested() {
    let sources: String = std::fs::read_dir(repo_root().join("tests/all")).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    let mut problems = Vec::new();
    let mut run = 0;
    for file in doc_files() {
        for b in blocks(&file) {
            match b.marker.as_deref() {
                Some("run") => run += 1,
                Some(m) if m.starts_with("by ") => {
                    let test = m["by ".len()..].trim();
                    let fn_name = test.rsplit("::").next().unwrap();
                    if !sources.contains(&format!("fn {fn_name}(")) {
                        problems.push(format!("{}: names the test {test}, which does not exist", b.at));
                    }
                }
                Some(m) if m.starts_with("not run: ") && m.len() > "not run: ".len() + 10 => {}
                _ => problems.push(format!("{}: a shell block without <!-- doc-test: run | by TEST | not run: REASON -->", b.at)),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(run >= 3, "only {run} blocks are run");
}

/// The blocks marked `run`, against the README's local cluster: each line succeeds and
/// prints what its `# →` comment says.
#[test]
fn the_docs_commands_do_what_they_say_against_a_local_cluster() {
    let _g = local_toml_cluster();
    let config = repo_root().join("config/local.toml");
    let names = ["a@127.0.0.1", "b@127.0.0.2", "c@127.0.0.3"];
    let nodes: Vec<Node> = names.iter().map(|n| Node::start(n, &config)).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_mesh(&refs, &names, FORM);
    let bin = bin();
    let bin_dir = bin.parent().unwrap().to_path_buf();
    let mut ran = 0;
    for file in doc_files() {
        for b in blocks(&file).into_iter().filter(|b| b.marker.as_deref() == Some("run")) {
            // One shell per block, a marker before each line; background jobs end with it.
            let mut script = String::from("trap 'kill $(jobs -p) 2>/dev/null' EXIT\n");
            let mut checks = Vec::new();
            for (i, line) in b.lines.iter().enumerate() {
                let trimmed = line.trim();
                // The harness sets these itself.
                if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("export WASMNODE_COOKIE=") || trimmed.starts_with("B=") {
                    continue;
                }
                // The command without its comment (which would swallow the brace after it).
                let command = split_comment(trimmed).0;
                // A stream that runs until interrupted: two seconds of it.
                let cmd = if command.contains("--watch") { format!("timeout 2 {command}; [ $? = 124 ]") } else { command.to_string() };
                // `cmd &` (a job in the background) takes no `;` before the brace.
                let sep = if cmd.ends_with('&') && !cmd.ends_with("&&") { " " } else { "; " };
                script.push_str(&format!("echo '@@@ {i}'\n{{ {cmd}{sep}}} 2>&1\necho \"@@@ rc=$?\"\n"));
                checks.push((i, line.clone(), expected(line)));
            }
            // From a file: `pgrep -f PATTERN` in a line must not find this shell itself.
            let dir = TempDir::new("docs");
            let path = dir.write("block.sh", &script);
            let out = Command::new("bash")
                .arg(&path)
                .current_dir(repo_root())
                .env("B", &bin)
                .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
                .env("WASMNODE_COOKIE", COOKIE)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            for (i, line, want) in checks {
                // What the line printed, and its exit code: between its marker and the next.
                let after = text.split(&format!("@@@ {i}\n")).nth(1).unwrap_or("");
                let (section, rest) = after.split_once("@@@ rc=").unwrap_or((after, "?"));
                let rc = rest.lines().next().unwrap_or("?");
                let must_fail = want.as_deref().is_some_and(|w| w.starts_with("error:"));
                assert_eq!(
                    rc == "0",
                    !must_fail,
                    "{} line {}: `{line}` exited {rc}:\n{section}\n---- the block's whole output:\n{text}{}",
                    b.at,
                    i + 1,
                    String::from_utf8_lossy(&out.stderr)
                );
                if let Some(want) = want {
                    assert!(section.contains(&want), "{} line {}: `{line}` should print {want:?}, printed:\n{section}", b.at, i + 1);
                }
            }
            ran += 1;
        }
    }
    assert!(ran >= 3, "ran only {ran} blocks");
}
