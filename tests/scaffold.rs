//! `passerelle new`: each language's project, written into a fresh folder
//! outside this repository, builds with the command its README gives and
//! passes its own fixtures; the route in each guide (`docs/guests/`) takes
//! the component. Rust builds with plain cargo and with cargo-component. A
//! missing tool (cargo-component, node, npm, python3) fails the test: it
//! never skips. Bad names, unknown languages and taken folders are refused.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{passerelle, repo};

const BAD_USAGE: i32 = 2;
const FAILED: i32 = 1;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// Runs a command, panicking with its output unless it succeeds.
fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(output.status.success(), "{shown} failed: {}", describe(&output));
    output
}

/// Panics, naming the tool and how to get it, unless `program args` runs.
fn require(program: &str, args: &[&str], install: &str) {
    let works = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        works,
        "`{program} {}` does not run: this test needs it ({install})",
        args.join(" ")
    );
}

/// One shared target folder for every Rust project the tests build, apart
/// from the host's artifacts: the crates they share compile once.
fn cargo_target() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_passerelle"));
    binary.parent().unwrap().parent().unwrap().join("scaffold")
}

/// A project written by `passerelle new` into a fresh folder outside the repo.
struct Project {
    _parent: tempfile::TempDir,
    dir: PathBuf,
    /// What `passerelle new` printed.
    printed: String,
}

impl Project {
    fn new(name: &str, lang: &str) -> Self {
        let parent = tempfile::Builder::new().prefix("passerelle-new-").tempdir().unwrap();
        assert!(
            !parent.path().starts_with(repo()),
            "the project must be made outside the repo"
        );
        let output = run(passerelle()
            .args(["new", name, "--lang", lang, "--dir"])
            .arg(parent.path()));
        let dir = parent.path().join(name);
        let printed = text(&output.stdout);
        for file in [
            "README.md",
            "fixtures.json",
            "guest.toml",
            "wit/transform.wit",
            ".gitignore",
        ] {
            assert!(dir.join(file).is_file(), "no {file} in {}", dir.display());
            assert!(
                printed.contains(&format!("{name}/{file}")),
                "{file} is not listed in:\n{printed}"
            );
        }
        Project {
            _parent: parent,
            dir,
            printed,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.current_dir(&self.dir);
        command
    }

    /// The component passes `passerelle check` and its own fixtures, run
    /// as the README and `passerelle new` say.
    /// A JavaScript or Python build: `dist/<name>.wasm` passes `check`,
    /// its fixtures lie beside it (for a host's swap check), and `new`
    /// printed the command that tests it.
    fn check_dist_build(&self) -> PathBuf {
        let component = self.dir.join("dist/acme-sync.wasm");
        self.check(&component);
        let beside = std::fs::read(self.dir.join("dist/acme-sync.fixtures.json")).unwrap();
        assert_eq!(beside, std::fs::read(self.dir.join("fixtures.json")).unwrap());
        assert!(
            self.printed
                .contains("passerelle transform --component dist/acme-sync.wasm --fixtures fixtures.json")
        );
        component
    }

    fn check(&self, component: &Path) {
        assert!(component.is_file(), "the build made no {}", component.display());
        let checked = run(passerelle().arg("check").arg("--component").arg(component));
        assert!(text(&checked.stdout).starts_with("ok: "), "{}", describe(&checked));
        let fixtures = run(self
            .command(env!("CARGO_BIN_EXE_passerelle"))
            .args(["transform", "--component"])
            .arg(component)
            .args(["--fixtures", "fixtures.json"]));
        assert_eq!(
            text(&fixtures.stdout).trim(),
            "ok: 4 fixture(s) passed",
            "{}",
            describe(&fixtures)
        );
    }

    /// The route of the language's guide, pointed at `component` (copied
    /// beside the configuration with the fixtures), passes `passerelle
    /// check --config`: the YAML a partner copies is valid and takes it.
    fn check_guide_route(&self, guide: &str, component: &Path) {
        let markdown = std::fs::read_to_string(repo().join("docs/guests").join(guide)).unwrap();
        let yaml = markdown
            .split("```yaml\n")
            .skip(1)
            .filter_map(|block| block.split_once("```").map(|(yaml, _)| yaml))
            .find(|yaml| yaml.contains("routes:"))
            .unwrap_or_else(|| panic!("no route in {guide}"));
        let deploy = self.dir.join("deploy");
        std::fs::create_dir_all(deploy.join("transforms")).unwrap();
        std::fs::write(deploy.join("passerelle.yaml"), yaml).unwrap();
        std::fs::copy(component, deploy.join("transforms/acme-sync.wasm")).unwrap();
        std::fs::copy(
            self.dir.join("fixtures.json"),
            deploy.join("transforms/acme-sync.fixtures.json"),
        )
        .unwrap();
        let output = run(passerelle()
            .args(["check", "--config"])
            .arg(deploy.join("passerelle.yaml"))
            .env("SHOP_TOKEN", "guide-token"));
        assert!(
            text(&output.stdout).contains("ok: route acme-sync"),
            "{}",
            describe(&output)
        );
    }
}

/// Makes sure rustup's target is there, as the README's first step does.
fn rust_target(target: &str) {
    require("rustup", &["--version"], "rustup, https://rustup.rs");
    let installed = run(Command::new("rustup").args(["target", "list", "--installed"]));
    if !text(&installed.stdout).lines().any(|line| line == target) {
        run(Command::new("rustup").args(["target", "add", target]));
    }
}

#[test]
fn the_rust_project_builds_with_cargo_and_passes_its_fixtures() {
    rust_target("wasm32-wasip2");
    let project = Project::new("acme-sync", "rust");
    let target = cargo_target();
    run(project
        .command("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target));
    let component = target.join("wasm32-wasip2/release/acme_sync.wasm");
    project.check(&component);
    let shown = "passerelle transform --component target/wasm32-wasip2/release/acme_sync.wasm --fixtures fixtures.json";
    assert!(project.printed.contains(shown), "{}", project.printed);
    project.check_guide_route("rust.md", &component);
}

#[test]
fn the_rust_project_builds_with_cargo_component_and_passes_its_fixtures() {
    require(
        "cargo",
        &["component", "--version"],
        "cargo install cargo-component --locked; scripts/test does",
    );
    // cargo-component builds for wasm32-wasip1, then adapts the module to WASI 0.2.
    rust_target("wasm32-wasip1");
    // A name of its own: the two Rust tests share the target folder.
    let project = Project::new("acme-sync-cc", "rust");
    let target = cargo_target();
    run(project
        .command("cargo")
        .args(["component", "build", "--release"])
        .env("CARGO_TARGET_DIR", &target));
    project.check(&target.join("wasm32-wasip1/release/acme_sync_cc.wasm"));
    // It writes bindings the crate does not use; .gitignore leaves them out.
    assert!(project.dir.join("src/bindings.rs").is_file());
    let ignored = std::fs::read_to_string(project.dir.join(".gitignore")).unwrap();
    assert!(ignored.lines().any(|line| line == "/src/bindings.rs"), "{ignored}");
}

#[test]
fn the_javascript_project_builds_with_npm_and_passes_its_fixtures() {
    require("node", &["--version"], "Node.js 20 or later");
    require("npm", &["--version"], "npm, with Node.js");
    let project = Project::new("acme-sync", "js");
    run(project.command("npm").args(["install", "--no-audit", "--no-fund"]));
    run(project.command("npm").args(["run", "build"]));
    assert!(project.dir.join("package-lock.json").is_file());
    let component = project.check_dist_build();
    project.check_guide_route("js.md", &component);
}

#[test]
fn the_python_project_builds_with_its_script_and_passes_its_fixtures() {
    require("python3", &["-m", "venv", "--help"], "Python 3.9 or later with venv");
    let project = Project::new("acme-sync", "python");
    run(&mut project.command("./build.sh"));
    assert!(project.dir.join(".venv/bin/componentize-py").is_file());
    let component = project.check_dist_build();
    // A second build reuses the venv: no network, no install line.
    let again = run(&mut project.command("./build.sh"));
    assert!(!text(&again.stderr).contains("installing"), "{}", describe(&again));
    project.check_guide_route("python.md", &component);
}

fn new_in(parent: &Path, args: &[&str]) -> Output {
    passerelle()
        .arg("new")
        .args(args)
        .arg("--dir")
        .arg(parent)
        .output()
        .unwrap()
}

#[test]
fn a_folder_that_is_not_empty_is_refused_and_left_alone() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::create_dir(parent.path().join("acme")).unwrap();
    std::fs::write(parent.path().join("acme/notes.txt"), "mine").unwrap();
    let output = new_in(parent.path(), &["acme"]);
    assert_eq!(output.status.code(), Some(FAILED), "{}", describe(&output));
    let shown = parent.path().join("acme").display().to_string();
    assert!(
        text(&output.stderr).contains(&format!("{shown} already exists")),
        "{}",
        describe(&output)
    );
    assert_eq!(
        std::fs::read_to_string(parent.path().join("acme/notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(parent.path().join("acme")).unwrap().count(), 1);
    // A second project of the same name, after a first one, too.
    assert!(new_in(parent.path(), &["other", "--lang", "js"]).status.success());
    let output = new_in(parent.path(), &["other", "--lang", "python"]);
    assert_eq!(output.status.code(), Some(FAILED), "{}", describe(&output));
    assert!(parent.path().join("other/index.js").is_file());
    assert!(!parent.path().join("other/app.py").exists());
    // An empty folder is taken.
    std::fs::create_dir(parent.path().join("empty")).unwrap();
    assert!(new_in(parent.path(), &["empty", "--lang", "python"]).status.success());
    assert!(parent.path().join("empty/app.py").is_file());
}

#[test]
fn a_bad_name_is_refused_naming_it() {
    let parent = tempfile::tempdir().unwrap();
    for name in ["Acme_Sync", "../escape", "2fast", "std"] {
        let output = new_in(parent.path(), &[name]);
        assert_eq!(output.status.code(), Some(FAILED), "{}", describe(&output));
        assert!(
            text(&output.stderr).contains(&format!("{name:?}")),
            "{}",
            describe(&output)
        );
    }
    assert_eq!(
        std::fs::read_dir(parent.path()).unwrap().count(),
        0,
        "something was written"
    );
}

#[test]
fn an_unknown_language_is_refused_naming_it() {
    let parent = tempfile::tempdir().unwrap();
    let output = new_in(parent.path(), &["acme", "--lang", "go"]);
    assert_eq!(output.status.code(), Some(BAD_USAGE), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("'go'") && stderr.contains("rust, js, python"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(parent.path()).unwrap().count(),
        0,
        "something was written"
    );
}
