//! The container build: the image copies everything the crate reads at compile time, and the manifest of
//! every workspace member.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{deploy, files_under, read, rel, repo};

#[test]
fn the_image_build_copies_everything_the_crate_reads_at_compile_time() {
    let dockerfile = read(&deploy().join("Dockerfile"));
    let copied: BTreeSet<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .map(|w| w.trim_end_matches('/'))
        .collect();
    // Files the compiler reads besides src/: the manifest, the lock file, a build script, and whatever
    // include_str!/include_bytes!/sqlx::migrate! name.
    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock"].map(String::from).into();
    if repo().join("build.rs").exists() {
        needed.insert("build.rs".to_owned());
    }
    for file in files_under(&repo().join("src")) {
        let text = read(&file);
        for (macro_call, relative_to_manifest) in [
            ("include_str!(\"", false),
            ("include_bytes!(\"", false),
            ("migrate!(\"", true),
        ] {
            for (i, _) in text.match_indices(macro_call) {
                let arg = &text[i + macro_call.len()..];
                let arg = &arg[..arg.find('"').unwrap()];
                let base = if relative_to_manifest {
                    repo()
                } else {
                    file.parent().unwrap().to_path_buf()
                };
                let target = normalize(&base.join(arg));
                let top = target
                    .strip_prefix(repo())
                    .unwrap_or_else(|_| {
                        panic!("{} reads {arg}, outside the repository", rel(&file))
                    })
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned();
                needed.insert(top);
            }
        }
    }
    needed.insert("src".to_owned());
    // Cargo reads the manifest of every workspace member to resolve the workspace, even when it builds
    // only the root package.
    let manifest: toml::Value =
        toml::from_str(&read(&repo().join("Cargo.toml"))).expect("Cargo.toml parses");
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("a workspace with members");
    for member in members.iter().filter_map(|m| m.as_str()) {
        if member != "." {
            needed.insert(format!("{member}/Cargo.toml"));
        }
    }
    let dockerignore = read(&repo().join(".dockerignore"));
    for path in &needed {
        assert!(
            copied.contains(path.as_str()),
            "deploy/Dockerfile does not COPY {path}, which the build reads (copied: {copied:?})"
        );
        assert!(
            dockerignore
                .lines()
                .any(|l| l.trim_end_matches('/') == format!("!{path}")),
            ".dockerignore excludes {path}, which the build reads"
        );
    }
    assert!(dockerfile.contains("ENTRYPOINT [\"cohort\"]"));
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("the image sets a USER");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
