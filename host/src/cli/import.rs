//! `passerelle import`: the initial import of a file, with a progress bar
//! on a terminal (a plain line every few seconds otherwise) and a summary.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use passerelle::amqp;
use passerelle::config::Config;
use passerelle::import::{self, Format, Options, Summary};
use sha2::{Digest as _, Sha256};

use super::{ConfigArg, Destination, exit};

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    to: Destination,
    /// The file; `-` reads stdin.
    file: PathBuf,
    /// Default: from the file's extension (.csv; .ndjson, .jsonl).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Messages per second at most, e.g. 200 or 200/s.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Resume: lines before this one are skipped.
    #[arg(long, default_value_t = 1, value_name = "LINE")]
    from_line: u64,
    /// Stop at the first bad line instead of reporting it and going on.
    #[arg(long)]
    strict: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let count = text.strip_suffix("/s").unwrap_or(text);
    match count.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= passerelle::config::MIN_RATE => Ok(rate),
        _ => Err(format!(
            "invalid rate {text:?}; expected messages per second (one a day at least), e.g. 200 or 200/s"
        )),
    }
}

/// How often the plain progress line is printed when not on a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub async fn import(args: ImportArgs) -> anyhow::Result<u8> {
    let config = Config::load_for_broker(&args.config.path)?;
    let name = args.file.display().to_string();
    let format = args
        .format
        .or_else(|| Format::of_path(&name))
        .with_context(|| format!("cannot tell the format of {name:?} from its name: say --format ndjson or csv"))?;
    let (input, size, source) = open(&args)?;
    let options = Options {
        exchange: args.to.exchange.clone(),
        routing_key: args.to.routing_key.clone(),
        from_line: args.from_line,
        rate: args.rate,
        strict: args.strict,
        source,
    };
    let connection = amqp::connect_first(&config.amqp.urls, "passerelle-import").await?;
    let progress = Progress::new(size);
    let counted = Counted::new(input, progress.bar.clone());
    let summary = match format {
        Format::Ndjson => {
            import::run(&connection, import::ndjson_records(counted), &options, |s| {
                progress.show(s)
            })
            .await
        }
        Format::Csv => {
            import::run(&connection, import::csv_records(counted), &options, |s| {
                progress.show(s)
            })
            .await
        }
    };
    progress.finish();
    let _ = connection.close(200, "imported".into()).await;
    let summary = summary?;
    print_summary(&summary, &options);
    Ok(if summary.bad_count > 0 { exit::BAD_LINES } else { 0 })
}

/// The input, its size when known (for the ETA), and the name its
/// message ids carry: the short SHA-256 of the file's first 64 KiB and
/// size, the same for the same file however it is named or resumed.
fn open(args: &ImportArgs) -> anyhow::Result<(Box<dyn BufRead>, Option<u64>, String)> {
    if args.file.as_os_str() == "-" {
        return Ok((Box::new(BufReader::new(std::io::stdin())), None, "stdin".into()));
    }
    let path = &args.file;
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut head = Vec::new();
    (&mut file).take(64 * 1024).read_to_end(&mut head)?;
    let digest = Sha256::new()
        .chain_update(&head)
        .chain_update(size.to_le_bytes())
        .finalize();
    let source: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let file = File::open(path)?;
    Ok((Box::new(BufReader::with_capacity(1 << 16, file)), Some(size), source))
}

/// Counts the bytes read, for the progress bar's position and ETA.
struct Counted<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R> Counted<R> {
    fn new(inner: R, bar: Option<ProgressBar>) -> Self {
        Self { inner, bar }
    }
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buffer)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amount: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(amount as u64);
        }
        self.inner.consume(amount);
    }
}

/// A bar on a terminal, a line every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(size: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = size.map_or_else(ProgressBar::new_spinner, ProgressBar::new);
            let template = "{bar:30} {bytes}/{total_bytes} {msg} ({elapsed}, ETA {eta})";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn show(&self, summary: &Summary) {
        let rate = summary.published as f64 / summary.elapsed.as_secs_f64().max(1e-3);
        let text = format!(
            "{} published, {} bad, {rate:.0} msg/s",
            summary.published, summary.bad_count
        );
        match &self.bar {
            Some(bar) => bar.set_message(text),
            None if self.last_line.get().elapsed() >= PLAIN_PROGRESS_EVERY => {
                self.last_line.set(Instant::now());
                eprintln!("import: line {}: {text}", summary.line);
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_summary(summary: &Summary, options: &Options) {
    let seconds = summary.elapsed.as_secs_f64();
    println!(
        "imported: {} published to {:?} with routing key {:?}, {} skipped, {} bad, in {seconds:.1}s ({:.0} msg/s)",
        summary.published,
        options.exchange,
        options.routing_key,
        summary.skipped,
        summary.bad_count,
        summary.published as f64 / seconds.max(1e-3)
    );
    for bad in &summary.bad {
        println!("  bad line {}: {}", bad.line, bad.problem);
    }
    let unlisted = summary.bad_count - summary.bad.len() as u64;
    if unlisted > 0 {
        println!("  and {unlisted} more bad line(s)");
    }
    println!("message ids: {}", import::message_id(&options.source, "<line>"));
}

#[cfg(test)]
mod tests {
    /// Fuzz finding (the pace of `config::fuzz::a_changed_value_is_taken_or_refused_where_it_is`,
    /// shared by `--rate`): a tiny rate made a wait too long for a
    /// `Duration` and panicked.
    #[test]
    fn a_rate_below_one_a_day_is_refused() {
        assert_eq!(super::parse_rate("200/s"), Ok(200.0));
        let error = super::parse_rate("1e-300").unwrap_err();
        assert!(error.contains("\"1e-300\""), "{error}");
    }
}
