//! `passerelle test`: a component's fixtures, one line per case, with a
//! diff of the expected and the actual outcome for each case that fails.
//! What a partner runs while writing a transform, in any language.

use std::path::{Path, PathBuf};

use clap::Args;
use passerelle::reload::{self, Mismatch, Verdict};
use passerelle::runtime::Runtime;

use super::exit;
use super::transform::{LimitArgs, load_component, parse_pair, read_fixtures, route_context};

#[derive(Args)]
pub struct TestArgs {
    /// The component to test.
    component: PathBuf,
    /// The fixtures file [default: <component>.fixtures.json beside the
    /// component, else fixtures.json in its folder].
    fixtures: Option<PathBuf>,
    /// A route configuration value the transform can read (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_pair)]
    config: Vec<(String, String)>,
    #[command(flatten)]
    limits: LimitArgs,
}

pub async fn test(args: TestArgs) -> anyhow::Result<u8> {
    let path = match args.fixtures {
        Some(path) => path,
        None => default_fixtures(&args.component)?,
    };
    let fixtures = read_fixtures(&path)?;
    let runtime = Runtime::new()?;
    let transform = match load_component(&runtime, &args.component)? {
        Ok(transform) => transform,
        Err(code) => return Ok(code),
    };
    let route = route_context("test", args.config, &args.limits);
    let verdicts = reload::run_fixtures(&runtime, &transform, &route, &fixtures).await;
    for verdict in &verdicts {
        print!("{}", report(verdict));
    }
    let failed = verdicts.iter().filter(|v| v.mismatch.is_some()).count();
    println!(
        "{}: {} passed, {failed} failed, of {} in {}",
        if failed == 0 { "ok" } else { "FAILED" },
        verdicts.len() - failed,
        verdicts.len(),
        path.display()
    );
    Ok(if failed == 0 { 0 } else { exit::FIXTURES_FAILED })
}

/// `<name>.fixtures.json` beside the component (where a host looks before
/// a swap), else `fixtures.json` in its folder (a transform project's).
fn default_fixtures(component: &Path) -> anyhow::Result<PathBuf> {
    let beside = reload::fixtures_path(component);
    let in_folder = component.with_file_name("fixtures.json");
    [&beside, &in_folder]
        .into_iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no fixtures for {}: neither {} nor {} exists; name the file after the component",
                component.display(),
                beside.display(),
                in_folder.display()
            )
        })
}

/// `pass  name`, or `FAIL  name` and the diff, indented.
fn report(verdict: &Verdict) -> String {
    match &verdict.mismatch {
        None => format!("pass  {}\n", verdict.name),
        Some(mismatch) => format!("FAIL  {}\n{}", verdict.name, diff(mismatch)),
    }
}

/// The expected and the actual outcome as pretty JSON, line by line:
/// `-` only expected, `+` only got.
fn diff(mismatch: &Mismatch) -> String {
    let pretty = |value| serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    let (expected, got) = (pretty(&mismatch.expected), pretty(&mismatch.got));
    let mut text = String::from("      --- expected\n      +++ got\n");
    for change in similar::TextDiff::from_lines(&expected, &got).iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => '-',
            similar::ChangeTag::Insert => '+',
            similar::ChangeTag::Equal => ' ',
        };
        text.push_str(&format!("      {sign} {change}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_case_shows_the_changed_field_only_as_minus_and_plus() {
        let verdict = Verdict {
            name: "status".into(),
            mismatch: Some(Mismatch {
                expected: json!({"actions": [{"status": 70, "name": "x"}]}),
                got: json!({"actions": [{"status": 71, "name": "x"}]}),
            }),
        };
        let text = report(&verdict);
        assert!(text.starts_with("FAIL  status\n"), "{text}");
        let marked: Vec<String> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(['-', '+']))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            marked,
            ["--- expected", "+++ got", r#"- "status": 70"#, r#"+ "status": 71"#],
            "{text}"
        );
        assert!(text.contains("\n              \"name\": \"x\",\n"), "{text}");
        let pass = Verdict {
            name: "fine".into(),
            mismatch: None,
        };
        assert_eq!(report(&pass), "pass  fine\n");
    }
}
