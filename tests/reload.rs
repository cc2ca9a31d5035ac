//! Hot reload and fleet-wide swaps, against the real broker and real
//! components: a file replaced under a steady stream, bad candidates
//! refused while the old version keeps serving, deploy and rollback across
//! two hosts, and a restart that does not recompile.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{ConfigDir, Deployment, Host, eventually, new_version, operator_command};

fn version_of(bytes: &[u8]) -> String {
    passerelle::version::Version::of(bytes).to_string()
}

/// Replaces a file the way deploy tools do: write beside it, then rename.
fn replace(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("incoming");
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn component_in(dir: &Path) -> PathBuf {
    dir.join("crm-to-shop.wasm")
}

/// The version header of each call, by account id.
fn versions_by_account(setup: &Deployment) -> Vec<(String, String)> {
    setup
        .server
        .calls()
        .iter()
        .map(|call| {
            let account = call.uri.rsplit('/').next().unwrap().to_string();
            (
                account,
                call.header("x-passerelle-transform-version").unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_replaced_mid_stream_swaps_versions_without_loss_or_mix() {
    let setup = Deployment::new().await;
    let config = setup.config("", "");
    let component = component_in(setup.config_dir.dir.path());
    let v1 = version_of(&std::fs::read(&component).unwrap());
    let host = setup.start_host(&config).await;

    setup.publish_accounts(0..2000).await;
    setup.server.wait_for_calls(500, Duration::from_secs(120)).await;
    let v2_bytes = new_version();
    let v2 = version_of(&v2_bytes);
    replace(&component, &v2_bytes);
    host.wait_for_log(&format!("swapped transform {v1} -> {v2}"), 1).await;
    setup.publish_accounts(2000..3000).await;

    setup.wait_until_every_account_arrives(3000, &host).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    let calls = versions_by_account(&setup);
    assert_eq!(calls.len(), 3000, "each message delivered exactly once");
    let (mut old, mut new) = (0, 0);
    for (account, version) in &calls {
        let n: usize = account.trim_start_matches("gg-").parse().unwrap();
        match version.as_str() {
            v if v == v1 => {
                assert!(n < 2000, "{account} was published after the swap but handled by {v1}");
                old += 1;
            }
            v if v == v2 => new += 1,
            other => panic!("{account} handled by an unknown version {other}"),
        }
    }
    assert!(old >= 500 && new >= 1000, "v1 handled {old}, v2 handled {new}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_candidates_are_refused_and_the_old_version_keeps_serving() {
    let setup = Deployment::new().await;
    let config = setup.config("", "");
    let component = component_in(setup.config_dir.dir.path());
    let v1 = version_of(&std::fs::read(&component).unwrap());
    let host = setup.start_host(&config).await;

    let fixtures = component.with_file_name("crm-to-shop.fixtures.json");
    let failing_fixture = r#"[{"name": "expects a reject", "message": {"body": {"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}}, "expect": {"reject": "never"}}]"#;
    let truncated = new_version()[..4000].to_vec();
    let candidates: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", truncated, "does not compile"),
        (
            "not a component",
            b"#!/bin/sh\necho hello\n".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "wrong world",
            std::fs::read(support::fixture("wrong-world")).unwrap(),
            "does not fit the passerelle:transform@0.1.0 world",
        ),
        ("failing fixtures", new_version(), "fixture \"expects a reject\""),
    ];
    for (index, (what, bytes, reason)) in candidates.into_iter().enumerate() {
        if what == "failing fixtures" {
            std::fs::write(&fixtures, failing_fixture).unwrap();
        }
        replace(&component, &bytes);
        host.wait_for_log(&format!("{v1} keeps serving"), index + 1).await;
        let log = host.log();
        let refusal = log.lines().rev().find(|l| l.contains("keeps serving")).unwrap();
        assert!(refusal.contains(reason), "{what}: {refusal}");

        setup.publish_accounts(index..index + 1).await;
        let calls = setup.server.wait_for_calls(index + 1, Duration::from_secs(30)).await;
        let version = calls[index].header("x-passerelle-transform-version").unwrap();
        assert_eq!(version, v1, "after the {what} candidate");
    }

    // Fixing the file is picked up.
    std::fs::remove_file(&fixtures).unwrap();
    let fixed = new_version();
    replace(&component, &fixed);
    host.wait_for_log(&format!("-> {}", version_of(&fixed)), 1).await;
    setup.publish_accounts(10..11).await;
    let calls = setup.server.wait_for_calls(5, Duration::from_secs(30)).await;
    assert_eq!(
        calls[4].header("x-passerelle-transform-version").unwrap(),
        version_of(&fixed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_deploy_swaps_every_host_and_rollback_returns_them_all() {
    let setup = Deployment::new().await;
    let config_a = setup.config("", "");
    let other_dir = ConfigDir::new();
    let config_b = setup.config_in(&other_dir, "", "");
    let v1 = version_of(&std::fs::read(component_in(other_dir.dir.path())).unwrap());
    let host_a = setup.start_nth_host(&config_a, 1, &[]).await;
    let host_b = setup.start_nth_host(&config_b, 2, &[]).await;

    // A bad component is refused before it reaches any host.
    let refused = operator_command(
        &[
            "deploy",
            "crm-to-shop",
            &support::fixture("wrong-world").display().to_string(),
        ],
        &config_a,
    );
    assert_eq!(refused.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refused, nothing deployed"));

    // So is one that fails a fixture beside it, with the fixtures' exit code.
    let failing = setup.config_dir.dir.path().join("failing.wasm");
    std::fs::write(&failing, new_version()).unwrap();
    let wrong_expectation = r#"[{"name": "expects a reject", "message": {"body": {"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}}, "expect": {"reject": "never"}}]"#;
    std::fs::write(passerelle::reload::fixtures_path(&failing), wrong_expectation).unwrap();
    let refused = operator_command(&["deploy", "crm-to-shop", &failing.display().to_string()], &config_a);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(14), "{stderr}");
    assert!(
        stderr.contains("refused, nothing deployed") && stderr.contains("expects a reject"),
        "{stderr}"
    );

    let v2_bytes = new_version();
    let v2 = version_of(&v2_bytes);
    let v2_file = setup.config_dir.dir.path().join("v2.wasm");
    std::fs::write(&v2_file, &v2_bytes).unwrap();
    let deployed = operator_command(&["deploy", "crm-to-shop", &v2_file.display().to_string()], &config_a);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    for host in [&host_a, &host_b] {
        host.wait_for_log(&format!("swapped transform {v1} -> {v2}"), 1).await;
    }
    // The swap comes first, then the file is stored where the route reads it.
    let stored = component_in(other_dir.dir.path());
    eventually(
        "the deploy stored in host B's folder",
        Duration::from_secs(10),
        async || (version_of(&std::fs::read(&stored).unwrap()) == v2).then_some(()),
    )
    .await;
    assert!(
        !host_a.log().contains("refused transform"),
        "the bad deploy reached a host"
    );

    // A host started later takes the latest deploy before it consumes.
    let late_dir = ConfigDir::new();
    let config_c = setup.config_in(&late_dir, "", "");
    let host_c = setup.start_nth_host(&config_c, 3, &[]).await;
    let log = host_c.log();
    let swapped = log
        .find(&format!("-> {v2} (latest deploy"))
        .expect("the late host took the deploy");
    let consuming = log.find("consuming").unwrap();
    assert!(swapped < consuming, "it consumed before taking the deploy:\n{log}");

    setup.publish_accounts(0..30).await;
    setup.server.wait_for_calls(30, Duration::from_secs(30)).await;
    assert!(versions_by_account(&setup).iter().all(|(_, v)| *v == v2));

    let rolled_back = operator_command(&["rollback", "crm-to-shop"], &config_a);
    assert!(
        rolled_back.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled_back.stderr)
    );
    for host in [&host_a, &host_b, &host_c] {
        host.wait_for_log(&format!("swapped transform {v2} -> {v1}"), 1).await;
    }
    setup.publish_accounts(30..60).await;
    setup.server.wait_for_calls(60, Duration::from_secs(30)).await;
    let after: Vec<_> = versions_by_account(&setup).into_iter().skip(30).collect();
    // On failure, each host's swaps say which one went back to v2, and how.
    let swaps = |host: &Host| -> Vec<String> {
        let log = host.log();
        log.lines()
            .filter(|line| line.contains("swapped transform"))
            .map(String::from)
            .collect()
    };
    assert!(
        after.iter().all(|(_, v)| *v == v1),
        "{after:?}\nhost A: {:#?}\nhost B: {:#?}\nhost C: {:#?}",
        swaps(&host_a),
        swaps(&host_b),
        swaps(&host_c)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_a_swap_serves_the_new_version_without_recompiling() {
    let setup = Deployment::new().await;
    let config = setup.config("", "");
    let cache = tempfile::tempdir().unwrap();
    let cache_env = [("PASSERELLE_CACHE_DIR", cache.path().to_str().unwrap())];
    let component = component_in(setup.config_dir.dir.path());
    let mut host = setup.start_nth_host(&config, 1, &cache_env).await;
    let v2_bytes = new_version();
    let v2 = version_of(&v2_bytes);
    replace(&component, &v2_bytes);
    host.wait_for_log(&format!("-> {v2}"), 1).await;
    assert_eq!(host.terminate().code(), Some(0));

    let host = setup.start_nth_host(&config, 1, &cache_env).await;
    let log = host.log();
    let loaded = log.lines().find(|l| l.contains("crm-to-shop.wasm (")).unwrap();
    assert!(
        loaded.contains("from the compile cache") && loaded.contains(&v2),
        "{loaded}"
    );
    setup.publish_accounts(0..1).await;
    let calls = setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert_eq!(calls[0].header("x-passerelle-transform-version"), Some(v2.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_in_place_in_several_writes_is_read_once_complete() {
    use std::io::Write as _;
    let setup = Deployment::new().await;
    let config = setup.config("", "");
    let component = component_in(setup.config_dir.dir.path());
    let v1 = version_of(&std::fs::read(&component).unwrap());
    let host = setup.start_host(&config).await;

    // In place, in three writes with pauses shorter than the debounce, the
    // way a slow copy arrives.
    let v2_bytes = new_version();
    let v2 = version_of(&v2_bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&component)
        .unwrap();
    for chunk in v2_bytes.chunks(v2_bytes.len() / 3 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(80));
    }
    drop(file);

    host.wait_for_log(&format!("swapped transform {v1} -> {v2}"), 1).await;
    assert!(
        !host.log().contains("refused transform"),
        "a half-written file was read:\n{}",
        host.log()
    );
}
