//! `passerelle dlq list|replay|purge`: a route's dead letters. Talks to
//! the broker only: the endpoints' secrets need not be set.

use std::sync::Arc;

use clap::{Args, Subcommand};
use passerelle::amqp;
use passerelle::config::Config;
use passerelle::ops::dlq;

use super::ConfigArg;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Show each dead letter: id, attempts, last HTTP status, transform version, age, reason.
    List(DlqArgs),
    /// Send dead letters back to the work queue with a fresh attempt budget.
    Replay {
        #[command(flatten)]
        target: DlqArgs,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        all: bool,
        /// Replay the dead letters with this message id (repeatable).
        #[arg(long = "id", value_name = "MESSAGE_ID")]
        ids: Vec<String>,
    },
    /// Delete every dead letter of the route.
    Purge(DlqArgs),
}

#[derive(Args)]
pub struct DlqArgs {
    /// The route whose dead-letter queue to work on.
    route: String,
    #[command(flatten)]
    config: ConfigArg,
}

pub async fn dlq(command: DlqCommand) -> anyhow::Result<u8> {
    let target = match &command {
        DlqCommand::List(target) | DlqCommand::Purge(target) | DlqCommand::Replay { target, .. } => target,
    };
    let config = Config::load_for_broker(&target.config.path)?;
    let route = config.route(&target.route)?;
    let connection = Arc::new(amqp::connect_first(&config.amqp.urls, "passerelle-dlq").await?);
    let dead_letter_queue = route.dead_letter_queue();
    match &command {
        DlqCommand::List(_) => print_dead_letters(&dlq::list(&connection, route).await?),
        DlqCommand::Replay { all, ids, .. } => {
            let selection = if *all {
                dlq::Selection::All
            } else {
                dlq::Selection::Ids(ids.clone())
            };
            let replayed = dlq::replay(&connection, route, &selection).await?;
            println!(
                "replayed {replayed} message(s) from {dead_letter_queue} into {}",
                route.queue
            );
        }
        DlqCommand::Purge(_) => {
            let purged = dlq::purge(&connection, route).await?;
            println!("purged {purged} message(s) from {dead_letter_queue}");
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(0)
}

fn print_dead_letters(letters: &[dlq::DeadLetter]) {
    println!("{} dead letter(s)", letters.len());
    if letters.is_empty() {
        return;
    }
    println!(
        "{:<24} {:>8} {:>6} {:<12} {:>8}  REASON",
        "MESSAGE ID", "ATTEMPTS", "STATUS", "VERSION", "AGE"
    );
    for letter in letters {
        let record = &letter.record;
        let age = letter
            .age
            .map_or("?".into(), |age| humantime::format_duration(age).to_string());
        let or_unknown = |text: &str| {
            if text.is_empty() {
                "?".to_string()
            } else {
                text.to_string()
            }
        };
        let reason = if record.reason.is_empty() {
            "(no reason recorded)".to_string()
        } else {
            record.reason.clone()
        };
        println!(
            "{:<24} {:>8} {:>6} {:<12} {:>8}  {}",
            letter.message_id.as_deref().unwrap_or("-"),
            if record.attempt == 0 {
                "?".into()
            } else {
                record.attempt.to_string()
            },
            record.http_status.map_or("-".into(), |s| s.to_string()),
            or_unknown(&record.version),
            age,
            reason
        );
    }
}
