//! Transform projects, as `passerelle new` writes them: a folder that builds
//! a transform in Rust, JavaScript or Python anywhere, outside this
//! repository, with nothing but the language's package registry.
//!
//! So a project carries what it needs, embedded in this binary from the
//! repository's own files (`include_str!`, never a copy kept by hand): the
//! WIT (`wit/transform.wit`) and the language's SDK under `vendor/`, laid
//! out as the SDK expects (the Rust SDK reads `../../wit` from its crate
//! folder, which is the project's `wit/`). The rest comes from the
//! templates in `scaffold/`: the example mapping (a CRM account to the
//! shop's `upsertBusiness` call), `fixtures.json` (the same for every
//! language), the build configuration, a README and `guest.toml` (the
//! manifest of `scripts/build-transforms`). `{{name}}` and `{{crate}}` in a
//! template are the project's name and its Rust crate name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The languages a project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Js,
    Python,
}

impl Language {
    /// As `guest.toml` and `--lang` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Js => "js",
            Language::Python => "python",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Relative to the project folder, with `/`.
    pub path: String,
    pub contents: String,
    pub executable: bool,
}

/// Why a project was not written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0:?} is not a transform name: lowercase words of letters and digits, each starting with a letter, joined by dashes (e.g. crm-to-shop)"
    )]
    BadName(String),
    #[error("{0:?} cannot be a transform name: it is a Rust keyword or a crate every transform uses")]
    ReservedName(String),
    #[error("{} already exists and is not an empty folder", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// What was written.
#[derive(Debug)]
pub struct Created {
    pub dir: PathBuf,
    /// Relative to `dir`, in the order written.
    pub files: Vec<String>,
}

/// The longest name taken (a crate, an npm package, a queue…).
const MAX_NAME: usize = 64;

/// Names a crate cannot have (Rust's keywords and built-in crates), or
/// that clash with what a project depends on.
const RESERVED: &str = "abstract alloc as async await become box break const continue core crate do dyn else enum extern \
    false final fn for gen if impl in let loop macro match mod move mut override passerelle-guest \
    priv proc-macro pub ref return self serde serde-json static std struct super test trait true try \
    type typeof unsafe unsized use virtual where while yield";

/// A name every tool takes as it is: a Cargo package, an npm package, a WIT
/// package (whose words start with a letter), a file name, a route name.
pub fn check_name(name: &str) -> Result<(), Error> {
    let words_ok = name.split('-').all(|word| {
        word.starts_with(|c: char| c.is_ascii_lowercase())
            && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if !words_ok || name.len() > MAX_NAME {
        return Err(Error::BadName(name.to_owned()));
    }
    if RESERVED.split_whitespace().any(|reserved| reserved == name) {
        return Err(Error::ReservedName(name.to_owned()));
    }
    Ok(())
}

/// Where the documented build puts the component, relative to the project folder
/// (for Rust, with the default target folder).
pub fn component_path(name: &str, language: Language) -> String {
    match language {
        Language::Rust => format!("target/wasm32-wasip2/release/{}.wasm", crate_name(name)),
        Language::Js | Language::Python => format!("dist/{name}.wasm"),
    }
}

/// The Rust crate name of a package name.
fn crate_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The files of a new project named `name`.
pub fn project(name: &str, language: Language) -> Result<Vec<File>, Error> {
    check_name(name)?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name(name))
            .replace("{{tools}}", &js_tools())
    };
    let mut files = Vec::new();
    let mut add = |path: &str, contents: String| {
        files.push(File {
            path: path.to_owned(),
            contents,
            executable: false,
        })
    };
    let (source, templates): (&str, Embedded) = match language {
        Language::Rust => ("src/lib.rs", RUST_TEMPLATES),
        Language::Js => ("index.js", JS_TEMPLATES),
        Language::Python => ("app.py", PYTHON_TEMPLATES),
    };
    for (path, template) in templates {
        add(path, fill(template));
    }
    add("fixtures.json", FIXTURES.to_owned());
    add("guest.toml", guest_toml(name, language, source));
    add("wit/transform.wit", WIT.to_owned());
    let (vendor, sdk) = match language {
        Language::Rust => {
            add("vendor/passerelle-guest/Cargo.toml", standalone_sdk_manifest());
            ("vendor/passerelle-guest", RUST_SDK)
        }
        Language::Js => ("vendor/passerelle-guest", JS_SDK),
        Language::Python => ("vendor/passerelle_guest", PYTHON_SDK),
    };
    for (path, contents) in sdk {
        add(&format!("{vendor}/{path}"), (*contents).to_owned());
    }
    if language == Language::Python {
        // componentize-py, pinned with hashes: what build.sh installs.
        add("requirements-build.txt", PYTHON_REQUIREMENTS.to_owned());
    }
    for file in &mut files {
        file.executable = file.path == "build.sh";
    }
    Ok(files)
}

/// Writes a new project to `parent/name`: refused when that is anything but
/// an empty folder or nothing. The files are written to a folder beside it
/// first, then renamed into place, so a failure leaves nothing half made.
pub fn create(parent: &Path, name: &str, language: Language) -> Result<Created, Error> {
    let files = project(name, language)?;
    let dir = parent.join(name);
    if dir.symlink_metadata().is_ok() && !is_empty_dir(&dir) {
        return Err(Error::Exists(dir));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging = parent.join(format!(".{name}.new-{}", std::process::id()));
    let written = write_all(&staging, &files).and_then(|()| {
        // Replaces an empty folder; fails on one that meanwhile filled up.
        std::fs::rename(&staging, &dir).map_err(|source| match source.kind() {
            std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::NotADirectory => Error::Exists(dir.clone()),
            _ => io(&dir)(source),
        })
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written?;
    Ok(Created {
        dir,
        files: files.into_iter().map(|f| f.path).collect(),
    })
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

fn write_all(root: &Path, files: &[File]) -> Result<(), Error> {
    for file in files {
        let path = root.join(&file.path);
        let fail = |source| Error::Io {
            path: path.clone(),
            source,
        };
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(fail)?;
        }
        std::fs::write(&path, &file.contents).map_err(fail)?;
        #[cfg(unix)]
        if file.executable {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
        }
    }
    Ok(())
}

fn guest_toml(name: &str, language: Language, source: &str) -> String {
    format!(
        "# The manifest of Passerelle's scripts/build-transforms, should this folder\n\
         # join its transforms/ (guests/README.md in Passerelle's repository).\n\
         language = \"{language}\"\n\
         source = \"{source}\"\n\
         output = \"{name}\"\n\
         shipped = true\n"
    )
}

// --- the embedded files -----------------------------------------------------------

/// Files as `(path in the project or the SDK folder, contents)`.
type Embedded = &'static [(&'static str, &'static str)];

const WIT: &str = include_str!("../../wit/transform.wit");
const FIXTURES: &str = include_str!("scaffold/fixtures.json");

const RUST_TEMPLATES: Embedded = &[
    ("Cargo.toml", include_str!("scaffold/rust/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("scaffold/rust/lib.rs")),
    ("README.md", include_str!("scaffold/rust/README.md")),
    (".gitignore", include_str!("scaffold/rust/gitignore")),
];

const JS_TEMPLATES: Embedded = &[
    ("package.json", include_str!("scaffold/js/package.json.tmpl")),
    ("index.js", include_str!("scaffold/js/index.js")),
    ("README.md", include_str!("scaffold/js/README.md")),
    (".gitignore", include_str!("scaffold/js/gitignore")),
];

const PYTHON_TEMPLATES: Embedded = &[
    ("app.py", include_str!("scaffold/python/app.py")),
    ("build.sh", include_str!("scaffold/python/build.sh")),
    ("README.md", include_str!("scaffold/python/README.md")),
    (".gitignore", include_str!("scaffold/python/gitignore")),
];

/// guests/rust, but its Cargo.toml (which inherits from the workspace):
/// see [`standalone_sdk_manifest`].
const RUST_SDK: Embedded = &[
    ("src/lib.rs", include_str!("../../guests/rust/src/lib.rs")),
    ("src/arena.rs", include_str!("../../guests/rust/src/arena.rs")),
    ("src/table.rs", include_str!("../../guests/rust/src/table.rs")),
    ("README.md", include_str!("../../guests/rust/README.md")),
];
const RUST_SDK_MANIFEST: &str = include_str!("../../guests/rust/Cargo.toml");
const WORKSPACE_MANIFEST: &str = include_str!("../../Cargo.toml");

/// guests/js, but its tests.
const JS_SDK: Embedded = &[
    ("package.json", include_str!("../../guests/js/package.json")),
    ("README.md", include_str!("../../guests/js/README.md")),
    (
        "bin/componentize.js",
        include_str!("../../guests/js/bin/componentize.js"),
    ),
    ("src/actions.js", include_str!("../../guests/js/src/actions.js")),
    ("src/crash.js", include_str!("../../guests/js/src/crash.js")),
    ("src/decode.js", include_str!("../../guests/js/src/decode.js")),
    ("src/failure.js", include_str!("../../guests/js/src/failure.js")),
    ("src/features.js", include_str!("../../guests/js/src/features.js")),
    ("src/index.js", include_str!("../../guests/js/src/index.js")),
    ("src/sandbox.js", include_str!("../../guests/js/src/sandbox.js")),
    ("src/table.js", include_str!("../../guests/js/src/table.js")),
];

/// guests/python/passerelle_guest, and the SDK's README.
const PYTHON_SDK: Embedded = &[
    (
        "__init__.py",
        include_str!("../../guests/python/passerelle_guest/__init__.py"),
    ),
    ("core.py", include_str!("../../guests/python/passerelle_guest/core.py")),
    (
        "crash.py",
        include_str!("../../guests/python/passerelle_guest/crash.py"),
    ),
    ("log.py", include_str!("../../guests/python/passerelle_guest/log.py")),
    ("README.md", include_str!("../../guests/python/README.md")),
];
const PYTHON_REQUIREMENTS: &str = include_str!("../../guests/python/requirements-build.txt");

/// The Rust SDK's Cargo.toml with each `key.workspace = true` replaced by
/// the workspace's value, so that the crate stands alone.
fn standalone_sdk_manifest() -> String {
    let inherited = workspace_values();
    let mut out = String::from("# Passerelle's Rust SDK (guests/rust), as `passerelle new` vendors it.\n");
    let mut section = String::new();
    for line in RUST_SDK_MANIFEST.lines() {
        if let Some(header) = line.strip_prefix('[') {
            section = header.trim_end_matches(']').to_owned();
        }
        match line.split_once(".workspace = true") {
            Some((key, "")) => {
                let table = if section == "package" {
                    "workspace.package"
                } else {
                    "workspace.dependencies"
                };
                let value = inherited
                    .get(&(table.to_owned(), key.to_owned()))
                    .unwrap_or_else(|| panic!("guests/rust/Cargo.toml: {key} is not in the workspace's [{table}]"));
                out.push_str(&format!("{key} = {value}\n"));
            }
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

/// `(table, key) -> value` of the workspace's `[workspace.package]` and
/// `[workspace.dependencies]` (one `key = value` a line, as it is written).
fn workspace_values() -> BTreeMap<(String, String), String> {
    let mut values = BTreeMap::new();
    let mut section = String::new();
    for line in WORKSPACE_MANIFEST.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            section = header.trim_end_matches(']').to_owned();
        } else if let Some((key, value)) = line.split_once(" = ")
            && !line.starts_with('#')
        {
            values.insert((section.clone(), key.trim().to_owned()), value.trim().to_owned());
        }
    }
    values
}

/// The JavaScript SDK's dependencies (the build tools), as lines of a JSON
/// object: the project names them too, at the same pinned versions.
fn js_tools() -> String {
    #[derive(serde::Deserialize)]
    struct Manifest {
        dependencies: BTreeMap<String, String>,
    }
    let package = JS_SDK
        .iter()
        .find(|(path, _)| *path == "package.json")
        .expect("the SDK's package.json");
    let manifest: Manifest = serde_json::from_str(package.1).expect("guests/js/package.json is JSON");
    manifest
        .dependencies
        .iter()
        .map(|(name, version)| format!("    \"{name}\": \"{version}\""))
        .collect::<Vec<_>>()
        .join(",\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Language; 3] = [Language::Rust, Language::Js, Language::Python];

    #[test]
    fn names_are_lowercase_words_starting_with_a_letter() {
        for good in ["acme", "crm-to-shop", "shop2crm", "a-b2-c"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "Acme",
            "crm_to_shop",
            "-acme",
            "acme-",
            "crm--shop",
            "2shop",
            "shop-2x",
            "a/b",
            "..",
            "acme sync",
            "é",
        ] {
            assert!(matches!(check_name(bad), Err(Error::BadName(_))), "{bad:?}");
        }
        assert!(matches!(check_name(&"a".repeat(65)), Err(Error::BadName(_))));
        for reserved in ["std", "test", "fn", "passerelle-guest"] {
            assert!(
                matches!(check_name(reserved), Err(Error::ReservedName(_))),
                "{reserved}"
            );
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for language in ALL {
            for file in project("acme-sync", language).unwrap() {
                assert!(!file.contents.contains("{{name}}"), "{language}: {}", file.path);
                assert!(!file.contents.contains("{{crate}}"), "{language}: {}", file.path);
                assert!(!file.contents.contains("{{tools}}"), "{language}: {}", file.path);
            }
        }
    }

    #[test]
    fn the_vendored_rust_sdk_stands_alone() {
        let manifest = standalone_sdk_manifest();
        assert!(!manifest.contains("workspace"), "{manifest}");
        assert!(manifest.contains("edition = \"2024\""), "{manifest}");
        assert!(
            manifest.contains("serde = { version = \"1\", features = [\"derive\"] }"),
            "{manifest}"
        );
        assert!(manifest.contains("wit-bindgen = "), "{manifest}");
        // It reads the WIT at ../../wit from its folder: the project's wit/.
        assert!(RUST_SDK[0].1.contains("path: \"../../wit\""));
    }

    #[test]
    fn the_js_project_pins_the_sdk_tools() {
        let files = project("acme-sync", Language::Js).unwrap();
        let package = files.iter().find(|f| f.path == "package.json").unwrap();
        let json: serde_json::Value = serde_json::from_str(&package.contents).unwrap();
        assert_eq!(json["devDependencies"]["@bytecodealliance/componentize-js"], "0.23.0");
        assert_eq!(
            json["dependencies"]["@passerelle/guest"],
            "file:vendor/passerelle-guest"
        );
        assert_eq!(json["name"], "acme-sync");
    }

    #[test]
    fn guest_toml_names_the_source_and_output() {
        for language in ALL {
            let files = project("acme-sync", language).unwrap();
            let manifest = files.iter().find(|f| f.path == "guest.toml").unwrap();
            let source = manifest
                .contents
                .lines()
                .find_map(|l| l.strip_prefix("source = "))
                .unwrap();
            assert!(
                files.iter().any(|f| format!("\"{}\"", f.path) == source),
                "{language}: {source}"
            );
            assert!(manifest.contents.contains(&format!("language = \"{language}\"")));
            assert!(manifest.contents.contains("output = \"acme-sync\""));
        }
    }

    /// Every file of an SDK's folder is vendored (but tests and caches): a
    /// file added to an SDK must be added to its list here.
    #[test]
    fn every_sdk_file_is_vendored() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cases: [(&str, Embedded, &[&str]); 3] = [
            ("guests/rust", RUST_SDK, &["Cargo.toml"]),
            ("guests/js", JS_SDK, &["test"]),
            ("guests/python/passerelle_guest", PYTHON_SDK, &["__pycache__"]),
        ];
        for (folder, sdk, left_out) in cases {
            let mut on_disk = Vec::new();
            list(&repo.join(folder), "", left_out, &mut on_disk);
            for path in on_disk {
                assert!(
                    sdk.iter().any(|(p, _)| *p == path),
                    "{folder}/{path} is not vendored by passerelle new"
                );
            }
        }
    }

    fn list(dir: &Path, prefix: &str, left_out: &[&str], out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if left_out.contains(&name.as_str()) || name == "node_modules" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                list(&entry.path(), &format!("{prefix}{name}/"), left_out, out);
            } else {
                out.push(format!("{prefix}{name}"));
            }
        }
    }

    #[test]
    fn a_project_is_refused_where_a_file_or_a_full_folder_is() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(parent.path().join("taken"), "x").unwrap();
        assert!(matches!(
            create(parent.path(), "taken", Language::Rust),
            Err(Error::Exists(_))
        ));
        std::fs::create_dir(parent.path().join("full")).unwrap();
        std::fs::write(parent.path().join("full/keep.txt"), "mine").unwrap();
        assert!(matches!(
            create(parent.path(), "full", Language::Js),
            Err(Error::Exists(_))
        ));
        assert_eq!(
            std::fs::read_to_string(parent.path().join("full/keep.txt")).unwrap(),
            "mine"
        );
        // An empty folder is taken, and nothing is left beside it.
        std::fs::create_dir(parent.path().join("empty")).unwrap();
        let created = create(parent.path(), "empty", Language::Python).unwrap();
        assert!(created.dir.join("app.py").is_file());
        let mut names: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["empty", "full", "taken"]);
    }
}
