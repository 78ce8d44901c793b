//! Every Markdown document of the repository links only inside it, so a clone has every page it names:
//!
//! - a Markdown link, image or reference definition either has a web scheme (`https:`, `http:`,
//!   `mailto:`) or is a relative path that stays inside the repository and names a file or folder that
//!   exists; its `#fragment`, if any, names a heading of the page it points to;
//! - an absolute path (`/…`, `~/…`, `file:`) is never a link target;
//! - a code span or a fenced block never names a path that leaves the repository (`../…` resolved from
//!   the document, or a fenced command's `../…`) or a path of one machine's working area (`/work/…`,
//!   `/tmp/…`, `/home/…`). System and container locations such as `/usr/lib/postgresql`, `/proc` or
//!   `/opt/kafka/bin` are facts about the platform, not links, and are allowed.
//!
//! The documents are every `*.md` file under the repository, except build output (`target/`), hidden
//! folders and the fuzzers' generated folders.

use std::path::{Component, Path, PathBuf};

use super::{read, rel, repo};

/// Absolute paths that belong to one machine's working area, never to the product.
const PRIVATE_PREFIXES: &[&str] = &[
    "/work/", "/tmp/", "/home/", "/root/", "/Users/", "/mnt/", "~/", "file:",
];

/// Folders never searched for documents: build output and generated fuzzing data.
const SKIPPED_DIRS: &[&str] = &["target", "fuzz/corpus", "fuzz/artifacts", "fuzz/coverage"];

/// Every Markdown document of the repository, relative to its root, sorted.
fn documents() -> Vec<PathBuf> {
    let root = repo();
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(&root).unwrap().to_path_buf();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let skipped = name.starts_with('.')
                    || name == "target"
                    || SKIPPED_DIRS.iter().any(|d| relative == Path::new(d));
                if !skipped {
                    stack.push(path);
                }
            } else if name.ends_with(".md") {
                out.push(relative);
            }
        }
    }
    out.sort();
    out
}

/// A problem found in a document: its line and what is wrong.
#[derive(Debug)]
struct Problem {
    line: usize,
    message: String,
}

/// `target` resolved against `base` (both relative to the repository root), or `None` when it climbs
/// above the root.
fn resolve(base: &Path, target: &str) -> Option<PathBuf> {
    let mut out: Vec<String> = base
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for part in Path::new(target).components() {
        match part {
            Component::ParentDir => {
                out.pop()?;
            }
            Component::CurDir => {}
            Component::Normal(p) => out.push(p.to_string_lossy().into_owned()),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

/// `%20` and the other `%XX` escapes of a link destination, decoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GitHub's anchor for a heading: the rendered text lower-cased, letters, digits, `-` and `_` kept,
/// spaces turned into `-`, everything else dropped.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    // Render the inline Markdown a heading may hold: `[text](target)` is its text, markers go.
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match (after.find("]("), after.find(')')) {
            (Some(close), Some(end)) if close < end => {
                text.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            _ => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors a document defines: its headings' slugs (repeats numbered `-1`, `-2`… as GitHub does) and
/// explicit `<a id="…">`/`<a name="…">` anchors.
fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut fence: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(marker) = fence_marker(trimmed) {
            match &fence {
                Some(open) if marker.starts_with(open.as_str()) => fence = None,
                Some(_) => {}
                None => fence = Some(marker),
            }
            continue;
        }
        if fence.is_some() {
            continue;
        }
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            let heading = trimmed[hashes..].trim().trim_end_matches('#').trim();
            let base = slug(heading);
            let repeats = out
                .iter()
                .filter(|a| {
                    **a == base
                        || a.strip_prefix(&format!("{base}-"))
                            .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count();
            out.push(if repeats == 0 {
                base
            } else {
                format!("{base}-{repeats}")
            });
        }
        for key in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(key) {
                let after = &rest[at + key.len()..];
                if let Some(end) = after.find('"') {
                    out.push(after[..end].to_owned());
                }
                rest = after;
            }
        }
    }
    out
}

/// The fence a line opens or closes (its run of backticks or tildes), if it is a fence line.
fn fence_marker(trimmed: &str) -> Option<String> {
    for c in ['`', '~'] {
        let run = trimmed.chars().take_while(|&x| x == c).count();
        if run >= 3 {
            return Some(c.to_string().repeat(run));
        }
    }
    None
}

/// Whether `target` is one of the private working-area paths.
fn private_path(token: &str) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| token.starts_with(p))
}

/// The text of a paragraph with its code spans blanked out, and the spans' contents with their offsets.
fn split_code_spans(block: &str) -> (String, Vec<(usize, String)>) {
    let mut prose = String::with_capacity(block.len());
    let mut spans = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let rest = &block[i..];
        if rest.starts_with('`') {
            let run = rest.chars().take_while(|&c| c == '`').count();
            let delimiter = "`".repeat(run);
            let body = &rest[run..];
            // The span closes at the next run of exactly `run` backticks.
            let mut search = 0;
            let mut close = None;
            while let Some(at) = body[search..].find(&delimiter) {
                let at = search + at;
                let longer = body[at + run..].starts_with('`');
                if !longer && (at == 0 || !body[..at].ends_with('`')) {
                    close = Some(at);
                    break;
                }
                search = at + body[at..].chars().take_while(|&c| c == '`').count();
            }
            match close {
                Some(at) => {
                    spans.push((i, body[..at].to_owned()));
                    let width = run * 2 + at;
                    // Blanked byte for byte, so offsets into the prose are offsets into the block.
                    for c in block[i..i + width].chars() {
                        if c == '\n' {
                            prose.push('\n');
                        } else {
                            prose.push_str(&" ".repeat(c.len_utf8()));
                        }
                    }
                    i += width;
                }
                None => {
                    prose.push_str(&delimiter);
                    i += run;
                }
            }
        } else {
            let c = rest.chars().next().unwrap();
            prose.push(c);
            i += c.len_utf8();
        }
    }
    (prose, spans)
}

/// The link destinations of a paragraph's prose (code spans blanked): inline links and images
/// `[…](target)` and reference definitions `[id]: target`, with their byte offsets.
fn link_targets(prose: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(at) = prose[search..].find("](") {
        let start = search + at + 2;
        let rest = &prose[start..];
        let target = if let Some(inner) = rest.strip_prefix('<') {
            inner.split('>').next().unwrap_or("").to_owned()
        } else {
            let mut depth = 0usize;
            let mut end = rest.len();
            for (k, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = k;
                        break;
                    }
                    ')' => depth -= 1,
                    c if c.is_whitespace() => {
                        end = k;
                        break;
                    }
                    _ => {}
                }
            }
            rest[..end].to_owned()
        };
        out.push((start, target));
        search = start;
    }
    let mut offset = 0;
    for line in prose.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent <= 3 && trimmed.starts_with('[') && !trimmed.starts_with("[^") {
            if let Some(close) = trimmed.find("]:") {
                let target = trimmed[close + 2..].split_whitespace().next().unwrap_or("");
                let target = target.trim_start_matches('<').trim_end_matches('>');
                if !target.is_empty() {
                    out.push((offset + indent + close + 2, target.to_owned()));
                }
            }
        }
        offset += line.len();
    }
    out
}

/// What is wrong with the link `target` in the document `doc` (relative to the repository root).
fn check_link(root: &Path, doc: &Path, doc_text: &str, target: &str) -> Option<String> {
    let target = target.trim();
    if target.is_empty() {
        return Some("an empty link".to_owned());
    }
    if let Some(colon) = target.find(':') {
        let scheme = &target[..colon];
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            && !target[..colon].contains('/')
        {
            return match scheme.to_ascii_lowercase().as_str() {
                "http" | "https" | "mailto" => None,
                _ => Some(format!(
                    "a `{scheme}:` link ({target}), outside the repository"
                )),
            };
        }
    }
    if target.starts_with('/') || target.starts_with('~') || target.starts_with('\\') {
        return Some(format!(
            "an absolute path ({target}), outside the repository"
        ));
    }
    let (path, fragment) = match target.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (target, None),
    };
    let path = path.split('?').next().unwrap_or("");
    let (file, text) = if path.is_empty() {
        (doc.to_path_buf(), Some(doc_text.to_owned()))
    } else {
        let base = doc.parent().unwrap_or(Path::new(""));
        let Some(file) = resolve(base, &percent_decode(path)) else {
            return Some(format!("{target} leads outside the repository"));
        };
        let on_disk = root.join(&file);
        if !on_disk.exists() {
            return Some(format!("{target}: {} does not exist", file.display()));
        }
        let text = (on_disk.is_file() && file.extension().is_some_and(|e| e == "md"))
            .then(|| read(&on_disk));
        (file, text)
    };
    if let (Some(fragment), Some(text)) = (fragment, text) {
        let fragment = percent_decode(fragment);
        if !anchors(&text).contains(&fragment) {
            return Some(format!(
                "{target}: {} has no heading #{fragment}",
                file.display()
            ));
        }
    }
    None
}

/// What is wrong with a path-like token of a code span or a fenced block, if anything. `from_doc`: the
/// token is read relative to the document (a code span in prose); otherwise relative to the repository
/// root (a command in a fenced block).
fn check_token(root: &Path, doc: &Path, token: &str, from_doc: bool) -> Option<String> {
    let token = token.trim_matches(|c: char| "\"'(),;:<>[]{}".contains(c));
    if private_path(token) {
        return Some(format!(
            "`{token}` is a path of one machine, outside the repository"
        ));
    }
    if !token.starts_with("../") {
        return None;
    }
    let base = if from_doc {
        doc.parent().unwrap_or(Path::new(""))
    } else {
        Path::new("")
    };
    match resolve(base, token) {
        None => Some(format!("`{token}` leads outside the repository")),
        Some(file) if from_doc && !root.join(&file).exists() => {
            Some(format!("`{token}`: {} does not exist", file.display()))
        }
        Some(_) => None,
    }
}

/// Every link or path in `text` (the document `doc`, relative to the repository root) that leads
/// outside the repository or to nothing.
fn problems(root: &Path, doc: &Path, text: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    let mut block = String::new();
    let mut block_line = 1;
    let lines: Vec<&str> = text.lines().collect();
    let flush = |block: &mut String, block_line: usize, out: &mut Vec<Problem>| {
        if block.is_empty() {
            return;
        }
        let line_of =
            |offset: usize| block_line + block.get(..offset).map_or(0, |b| b.matches('\n').count());
        let (prose, spans) = split_code_spans(block);
        for (offset, target) in link_targets(&prose) {
            if let Some(message) = check_link(root, doc, text, &target) {
                out.push(Problem {
                    line: line_of(offset),
                    message,
                });
            }
        }
        for (offset, span) in spans {
            for token in span.split_whitespace() {
                if let Some(message) = check_token(root, doc, token, true) {
                    out.push(Problem {
                        line: line_of(offset),
                        message,
                    });
                }
            }
        }
        block.clear();
    };
    for (index, line) in lines.iter().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        if let Some(marker) = fence_marker(trimmed) {
            match &fence {
                Some(open) if marker.starts_with(open.as_str()) => fence = None,
                Some(_) => {}
                None => {
                    flush(&mut block, block_line, &mut out);
                    fence = Some(marker);
                }
            }
            continue;
        }
        if fence.is_some() {
            for token in line.split_whitespace() {
                if let Some(message) = check_token(root, doc, token, false) {
                    out.push(Problem {
                        line: number,
                        message,
                    });
                }
            }
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut block, block_line, &mut out);
            continue;
        }
        if block.is_empty() {
            block_line = number;
        }
        block.push_str(line);
        block.push('\n');
    }
    flush(&mut block, block_line, &mut out);
    out
}

#[test]
fn every_document_links_only_to_files_inside_the_repository() {
    let root = repo();
    let docs = documents();
    for expected in [
        "README.md",
        "BENCHMARKS.md",
        "SECURITY.md",
        "docs/README.md",
        "deploy/README.md",
    ] {
        assert!(
            docs.iter().any(|d| d == Path::new(expected)),
            "{expected} is not among the documents found: {docs:?}"
        );
    }
    let mut found = Vec::new();
    for doc in &docs {
        let text = read(&root.join(doc));
        for p in problems(&root, doc, &text) {
            found.push(format!("{}:{}: {}", doc.display(), p.line, p.message));
        }
    }
    assert!(
        found.is_empty(),
        "links outside the repository or to nothing:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_page_under_docs_is_listed_in_the_docs_index() {
    let root = repo();
    let index = read(&root.join("docs/README.md"));
    for doc in documents() {
        let Ok(page) = doc.strip_prefix("docs") else {
            continue;
        };
        if page == Path::new("README.md") {
            continue;
        }
        let page = page.display().to_string();
        assert!(
            index.contains(&format!("]({page})")),
            "docs/README.md does not list {}",
            rel(&root.join(&doc))
        );
    }
}

/// The problems of a one-line document at `doc`, as messages.
fn messages(doc: &str, text: &str) -> Vec<String> {
    problems(&repo(), Path::new(doc), text)
        .into_iter()
        .map(|p| p.message)
        .collect()
}

#[test]
fn a_link_that_climbs_out_of_the_repository_is_refused() {
    let found = messages("README.md", "The design: [DESIGN](../shared/DESIGN.md).");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("outside the repository"), "{found:?}");
    let found = messages(
        "docs/worker.md",
        "See ![a](../../elsewhere.png) and [b]: ../../x.md",
    );
    assert_eq!(
        found.len(),
        1,
        "only the inline image is a link here: {found:?}"
    );
    let found = messages("docs/worker.md", "[b]: ../../x.md");
    assert_eq!(
        found.len(),
        1,
        "a reference definition is a link: {found:?}"
    );
}

#[test]
fn absolute_and_machine_paths_are_refused_in_links_code_spans_and_fences() {
    assert_eq!(
        messages("README.md", "[d](/work/shared/DESIGN.md)").len(),
        1
    );
    assert_eq!(messages("README.md", "[d](file:///tmp/x.md)").len(), 1);
    assert_eq!(
        messages("README.md", "The design is in `../shared/DESIGN.md`.").len(),
        1
    );
    assert_eq!(
        messages("README.md", "Limits in `/work/shared/POSTGRES-LIMITS.md`.").len(),
        1
    );
    assert_eq!(
        messages("README.md", "```sh\ncat ../shared/KAFKA-TESTING.md\n```").len(),
        1
    );
    assert_eq!(
        messages("docs/api.md", "See `../shared/x.md`.").len(),
        1,
        "inside the repo but missing"
    );
    // Platform facts and URL paths are not links.
    assert!(messages(
        "README.md",
        "`/usr/lib/postgresql`, `/proc`, `/api/v1/groups`"
    )
    .is_empty());
}

#[test]
fn a_relative_link_to_a_missing_file_or_heading_is_refused() {
    assert_eq!(messages("README.md", "[w](docs/no-such-page.md)").len(), 1);
    assert_eq!(
        messages("README.md", "[w](docs/worker.md#no-such-heading)").len(),
        1
    );
    assert_eq!(messages("README.md", "[r](#no-such-heading)").len(), 1);
    assert!(messages(
        "README.md",
        "[w](docs/worker.md#time) [s](schemas/examples/)"
    )
    .is_empty());
    assert!(messages(
        "docs/api.md",
        "[w](worker.md) [r](../README.md) `../deploy/README.md`"
    )
    .is_empty());
    assert!(messages(
        "README.md",
        "[a](https://example.com/a) <https://example.com> [m](mailto:a@b.c)"
    )
    .is_empty());
    assert!(messages(
        "README.md",
        "`[not a link](../../x)` and\n```\n[nor](../../y)\n```"
    )
    .is_empty());
}

#[test]
fn anchors_follow_githubs_slugs() {
    assert_eq!(slug("PostgreSQL's write load"), "postgresqls-write-load");
    assert_eq!(
        slug("`filter_fields_used` and the field index"),
        "filter_fields_used-and-the-field-index"
    );
    assert_eq!(slug("A walkthrough with curl"), "a-walkthrough-with-curl");
    assert_eq!(
        anchors("# A\n## A\n```\n# not\n```\n## B"),
        ["a", "a-1", "b"]
    );
}
