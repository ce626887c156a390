//! The release image builds from what is committed, as `fly deploy` builds it.
//!
//! No container engine here can pull base images, so the build stage is replayed as a builder
//! would run it: the build context is the committed tree less `.dockerignore`; each `COPY` of the
//! build stage copies from that context into a fresh directory standing for the stage's root;
//! each `RUN` runs there, with this machine's toolchain (which must be the one the stage's `FROM`
//! names); then every source the final stage copies must exist, and the binary must run. Where a
//! container engine can build, the image is also built for real.
//!
//! It builds what is committed (`HEAD`): commit before running it. A test binary of its own: the
//! release build takes both cores for minutes, and nothing else should be timed beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use globset::{GlobBuilder, GlobMatcher};

/// One instruction of the Dockerfile, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    name: Option<String>,
    image: String,
    instructions: Vec<Instruction>,
}

fn stages(dockerfile: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "the Dockerfile ends in a continuation line");
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_owned());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                _ => panic!("FROM {args}: not a form this replay knows"),
            };
            stages.push(Stage { name, image: words[0].to_owned(), instructions: Vec::new() });
        } else {
            stages.last_mut().expect("an instruction before FROM").instructions.push(Instruction { keyword, args });
        }
    }
    stages
}

/// `.dockerignore` as Docker reads it: each line a pattern relative to the context's root, where
/// `*` stays within one path segment and `**` spans any; a directory that matches takes what is
/// below it along; `!` brings a path back; the last matching line decides.
struct DockerIgnore(Vec<(bool, GlobMatcher)>);

impl DockerIgnore {
    fn parse(text: &str) -> Self {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (keep, pattern) = match l.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, l),
                };
                let pattern = pattern.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
                let glob = GlobBuilder::new(pattern).literal_separator(true).build().expect("a valid pattern");
                (keep, glob.compile_matcher())
            })
            .collect();
        DockerIgnore(rules)
    }

    fn excludes(&self, path: &str) -> bool {
        // The path itself, and each directory above it.
        let prefixes: Vec<&str> =
            path.match_indices('/').map(|(i, _)| &path[..i]).chain(std::iter::once(path)).collect();
        let mut excluded = false;
        for (keep, glob) in &self.0 {
            if prefixes.iter().any(|p| glob.is_match(p)) {
                excluded = !keep;
            }
        }
        excluded
    }
}

/// The build context: the files of the commit checked out (`HEAD`, not the work tree: commit first),
/// unpacked into `into`, less what `.dockerignore` excludes. Returns their relative paths.
fn context(root: &Path, into: &Path) -> Vec<String> {
    std::fs::create_dir_all(into).unwrap();
    let archive = Command::new("sh")
        .args(["-ec", &format!("git archive --format=tar HEAD | tar -x -C '{}'", into.display())])
        .current_dir(root)
        .status()
        .expect("git and tar run");
    assert!(archive.success(), "git archive HEAD failed");
    let out =
        Command::new("git").args(["ls-tree", "-r", "-z", "--name-only", "HEAD"]).current_dir(root).output().unwrap();
    assert!(out.status.success(), "git ls-tree failed");
    let ignore = DockerIgnore::parse(&std::fs::read_to_string(into.join(".dockerignore")).unwrap_or_default());
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|p| !p.is_empty() && !ignore.excludes(p))
        .filter(|p| into.join(p).is_file())
        .map(str::to_owned)
        .collect()
}

/// Where an absolute path inside the replayed stage lives on this machine.
fn inside(stage_root: &Path, path: &str) -> PathBuf {
    stage_root.join(path.trim_start_matches('/'))
}

/// `COPY src… dest` from the context, as Docker copies: a directory's contents go into `dest`;
/// a file goes into `dest` if it ends in `/` (or there are several sources), else becomes `dest`.
fn copy(context_root: &Path, files: &[String], srcs: &[&str], dest: &Path, dest_is_dir: bool) {
    for src in srcs {
        assert!(!src.contains(['*', '?', '[']), "COPY {src}: wildcards are not replayed");
        let src = src.trim_start_matches("./").trim_end_matches('/');
        let under: Vec<&String> = files.iter().filter(|f| src == "." || f.starts_with(&format!("{src}/"))).collect();
        if files.iter().any(|f| f == src) {
            let target = if dest_is_dir { dest.join(Path::new(src).file_name().unwrap()) } else { dest.to_owned() };
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(context_root.join(src), &target).unwrap();
        } else if !under.is_empty() {
            for file in under {
                let rel = if src == "." { file.as_str() } else { &file[src.len() + 1..] };
                let target = dest.join(rel);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::copy(context_root.join(file), &target).unwrap();
            }
        } else {
            panic!("COPY {src}: not in the build context (is it committed, or excluded by .dockerignore?)");
        }
    }
}

/// Splits `COPY [--flag…] src… dest` into its flags, sources and destination.
fn copy_args(args: &str) -> (Vec<&str>, Vec<&str>, &str) {
    let words: Vec<&str> = args.split_whitespace().collect();
    assert!(!args.trim_start().starts_with('['), "COPY in JSON form is not replayed: {args}");
    let flags: Vec<&str> = words.iter().copied().take_while(|w| w.starts_with("--")).collect();
    let rest = &words[flags.len()..];
    assert!(rest.len() >= 2, "COPY {args}: needs a source and a destination");
    (flags, rest[..rest.len() - 1].to_vec(), rest[rest.len() - 1])
}

fn container_engine() -> Option<&'static str> {
    ["docker", "podman"]
        .into_iter()
        .find(|engine| Command::new(engine).arg("info").output().map(|o| o.status.success()).unwrap_or(false))
}

#[test]
fn the_release_image_builds_from_the_committed_tree() {
    let root = devstack::repo_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let stages = stages(&dockerfile);
    let build = stages.iter().find(|s| s.name.as_deref() == Some("build")).expect("a stage named build");
    let last = stages.last().unwrap();

    // The stage's toolchain is this machine's, or the replay would prove nothing about it.
    let tag = build.image.strip_prefix("rust:").expect("the build stage is FROM rust:<version>");
    let version = tag.split('-').next().unwrap();
    let rustc = String::from_utf8(Command::new("rustc").arg("--version").output().unwrap().stdout).unwrap();
    assert!(rustc.starts_with(&format!("rustc {version}")), "the image builds with Rust {version}; here: {rustc}");

    let scratch = std::env::temp_dir().join(format!("twilio-ingest-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let (build_context, stage_root) = (scratch.join("context"), scratch.join("stage"));
    let files = context(&root, &build_context);
    std::fs::create_dir_all(&stage_root).unwrap();
    let mut workdir = PathBuf::from("/");
    let mut env: Vec<(String, String)> = Vec::new();
    for instruction in &build.instructions {
        let args = instruction.args.as_str();
        match instruction.keyword.as_str() {
            "WORKDIR" => {
                workdir = workdir.join(args);
                std::fs::create_dir_all(inside(&stage_root, workdir.to_str().unwrap())).unwrap();
            }
            "ENV" => {
                for pair in args.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV in key=value form");
                    env.push((k.to_owned(), v.trim_matches('"').to_owned()));
                }
            }
            "COPY" => {
                let (flags, srcs, dest) = copy_args(args);
                assert!(flags.is_empty(), "COPY {args}: flags in the build stage are not replayed");
                let dest_abs = workdir.join(dest);
                let dest_is_dir = dest.ends_with('/') || dest == "." || srcs.len() > 1;
                copy(&build_context, &files, &srcs, &inside(&stage_root, dest_abs.to_str().unwrap()), dest_is_dir);
            }
            "RUN" => {
                let status = Command::new("sh")
                    .args(["-ec", args])
                    .current_dir(inside(&stage_root, workdir.to_str().unwrap()))
                    .envs(env.iter().cloned())
                    .status()
                    .expect("sh runs");
                assert!(status.success(), "the build stage's RUN failed: {args}");
            }
            "ARG" | "LABEL" => {}
            other => panic!("{other} in the build stage is not replayed"),
        }
    }

    // What the final stage takes from the build stage and from the context is all there.
    let mut binary = None;
    for instruction in last.instructions.iter().filter(|i| i.keyword == "COPY") {
        let (flags, srcs, dest) = copy_args(&instruction.args);
        for src in srcs {
            if flags.contains(&"--from=build") {
                let built = inside(&stage_root, src);
                assert!(built.is_file(), "the final stage copies {src}, which the build stage did not make");
                if dest.ends_with("/twilio-ingest") {
                    binary = Some(built);
                }
            } else {
                assert!(flags.is_empty(), "COPY {}: flags not replayed", instruction.args);
                assert!(files.iter().any(|f| f == src), "the final stage copies {src}, which is not in the context");
            }
        }
    }
    let binary = binary.expect("the final stage copies the twilio-ingest binary");
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(version.status.success(), "the built binary does not run");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("twilio-ingest "));
    // The subcommand the README runs inside the machine is in the built binary.
    let readyz = Command::new(&binary).args(["readyz", "--help"]).output().unwrap();
    assert!(readyz.status.success(), "the built binary has no readyz command");
    std::fs::remove_dir_all(&scratch).unwrap();

    match container_engine() {
        Some(engine) => {
            let status = Command::new(engine)
                .args(["build", "--tag", "twilio-ingest:test", "."])
                .current_dir(&root)
                .status()
                .unwrap();
            assert!(status.success(), "{engine} build failed");
        }
        None => eprintln!("no container engine answers here: the build stage was replayed, not built by one"),
    }
}

#[test]
fn dockerignore_matches_as_docker_does() {
    let ignore = DockerIgnore::parse("target\n*.md\ntests/it\n.env*\n!keep.md\n");
    assert!(ignore.excludes("target/release/x"));
    assert!(ignore.excludes("README.md"));
    // `*` stays within the root's segment, as Go's filepath.Match does.
    assert!(!ignore.excludes("vendor/postgrest/README.md"));
    assert!(ignore.excludes("tests/it/main.rs"));
    assert!(!ignore.excludes("tests/stack/Cargo.toml"));
    assert!(ignore.excludes(".env.local"));
    assert!(!ignore.excludes("keep.md"));
    assert!(!ignore.excludes("src/main.rs"));
}

#[test]
fn the_dockerfile_is_read_with_its_continuation_lines() {
    let stages = stages("# c\nFROM rust:1 AS build\nRUN a \\\n && b\nFROM debian\nCOPY --from=build /x /y\n");
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].instructions[0].args, "a  && b");
    assert_eq!(stages[1].name, None);
    assert_eq!(copy_args(&stages[1].instructions[0].args), (vec!["--from=build"], vec!["/x"], "/y"));
}
