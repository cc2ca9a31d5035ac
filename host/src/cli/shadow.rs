//! `passerelle shadow`: a candidate beside a route's live transform on a
//! running host, which owns the live traffic. Talks to the host's admin
//! API: the address is the configuration's `admin.listen` (or `--admin`),
//! the bearer token is read from the variable `admin.token_env` names.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{ArgGroup, Args};
use passerelle::config::{Config, Secret};
use passerelle::reload;
use passerelle::shadow::Report;
use reqwest::{Method, RequestBuilder, multipart};
use serde_json::Value;

use super::{ConfigArg, exit};

#[derive(Args)]
#[command(group(ArgGroup::new("action").required(true).args(["candidate", "report", "promote", "stop"])))]
pub struct ShadowArgs {
    route: String,
    /// Start shadowing with this component; `<name>.fixtures.json` beside
    /// it is checked too.
    candidate: Option<PathBuf>,
    /// Show the running shadow's report.
    #[arg(long)]
    report: bool,
    /// Swap the candidate in (checked like any swap) and stop the shadow.
    #[arg(long)]
    promote: bool,
    /// Stop the shadow; shows its last report.
    #[arg(long)]
    stop: bool,
    /// Print answers as JSON.
    #[arg(long)]
    json: bool,
    /// The admin API's base URL (default: http:// and `admin.listen`).
    #[arg(long, env = "PASSERELLE_ADMIN_URL")]
    admin: Option<String>,
    #[command(flatten)]
    config: ConfigArg,
}

pub async fn shadow(args: ShadowArgs) -> anyhow::Result<u8> {
    let api = AdminApi::new(&args)?;
    let path = format!("/transforms/{}/shadow", args.route);
    let request = match &args.candidate {
        Some(candidate) => api.request(Method::POST, &path).multipart(candidate_form(candidate)?),
        None if args.report => api.request(Method::GET, &path),
        None if args.stop => api.request(Method::DELETE, &path),
        None => api.request(Method::POST, &format!("{path}/promote")),
    };
    let answer = match send(request).await? {
        Ok(answer) => answer,
        Err(refusal) => return Ok(refusal),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(0);
    }
    let text = |key: &str| answer[key].as_str().unwrap_or("?").to_string();
    if args.candidate.is_some() {
        println!(
            "shadowing route {} with candidate {} beside live {}\n\
             see: passerelle shadow {0} --report (then --promote or --stop)",
            args.route,
            text("candidate"),
            text("live")
        );
    } else if args.promote {
        println!(
            "promoted {} on route {} (was {})",
            text("version"),
            args.route,
            text("previous")
        );
        print_report(&serde_json::from_value(answer["report"].clone())?);
    } else {
        print_report(&serde_json::from_value(answer)?);
    }
    Ok(0)
}

/// The running host's admin API, with its token.
struct AdminApi {
    base: String,
    token: Secret,
    client: reqwest::Client,
}

impl AdminApi {
    fn new(args: &ShadowArgs) -> anyhow::Result<Self> {
        let file = args.config.path.display();
        let config = Config::load_for_broker(&args.config.path)?;
        let admin = config
            .admin
            .ok_or_else(|| anyhow!("{file}: no admin section: passerelle shadow talks to the host's admin API"))?;
        let token = std::env::var(&admin.token_env).map_err(|_| {
            anyhow!(
                "{file}: admin.token_env: environment variable {} is not set",
                admin.token_env
            )
        })?;
        let base = match &args.admin {
            Some(url) => url.trim_end_matches('/').to_string(),
            None if admin.listen.port() == 0 => {
                bail!(
                    "{file}: admin.listen: port 0 is picked at start; give the host's address with --admin http://HOST:PORT"
                )
            }
            None if admin.listen.ip().is_unspecified() => format!("http://127.0.0.1:{}", admin.listen.port()),
            None => format!("http://{}", admin.listen),
        };
        let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        Ok(Self {
            base,
            token: Secret::new(token),
            client,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
    }
}

fn candidate_form(candidate: &std::path::Path) -> anyhow::Result<multipart::Form> {
    let bytes = std::fs::read(candidate).with_context(|| format!("cannot read {}", candidate.display()))?;
    let mut form = multipart::Form::new().part("component", multipart::Part::bytes(bytes));
    if let Some(fixtures) = reload::fixtures_beside(candidate).map_err(anyhow::Error::msg)? {
        form = form.text("fixtures", fixtures);
    }
    Ok(form)
}

/// The answer's JSON, or for a refused candidate the exit code (after
/// saying why): 13 for a bad component, 14 for a failing fixture.
async fn send(request: RequestBuilder) -> anyhow::Result<Result<Value, u8>> {
    let response = request.send().await.context("the host's admin API is not reachable")?;
    let status = response.status();
    let body: Value = response.json().await.context("the admin API's answer is not JSON")?;
    if status.is_success() {
        return Ok(Ok(body));
    }
    let error = body["error"].as_str().unwrap_or("(no reason given)");
    match body["refusal"].as_str() {
        Some(kind) => {
            eprintln!("{error}");
            Ok(Err(if kind == "fixtures" {
                exit::FIXTURES_FAILED
            } else {
                exit::BAD_COMPONENT
            }))
        }
        None => bail!("the admin API answered {status}: {error}"),
    }
}

fn print_report(report: &Report) {
    let tally = &report.tally;
    println!(
        "route {}: candidate {} beside live {}, since {}",
        report.route, report.candidate, report.live, report.since
    );
    println!(
        "compared {}: {} identical, {} different, {} failing; {} skipped",
        tally.compared, tally.identical, tally.different, tally.failing, tally.skipped
    );
    if !tally.differences.is_empty() {
        println!("first differences:");
    }
    for difference in &tally.differences {
        let id = difference.message_id.as_deref().unwrap_or("(no message id)");
        println!("  {id} (live {})", difference.live_version);
        for field in &difference.fields {
            let show = |value: &Option<Value>| value.as_ref().map_or("(absent)".into(), Value::to_string);
            println!(
                "    {}: live {}, candidate {}",
                field.path,
                show(&field.live),
                show(&field.candidate)
            );
        }
    }
    if !tally.failures.is_empty() {
        println!("first failures:");
    }
    for failure in &tally.failures {
        let id = failure.message_id.as_deref().unwrap_or("(no message id)");
        println!("  {id}: {}", failure.reason);
    }
}
