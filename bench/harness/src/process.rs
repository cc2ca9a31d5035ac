//! Contestants as separate processes: started with their output in a log
//! file, read from `/proc` (CPU time, peak RSS), stopped with SIGTERM the
//! way an operator stops a service, and killed if they do not stop (or if
//! the harness fails: children are killed on drop).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use tokio::process::{Child, Command};

/// How long a contestant may take to finish its messages in flight and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// User + system time of process `pid` (all its threads, living or gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: field 3 (state) onwards;
    // utime and stime are fields 14 and 15, in clock ticks.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_second as f64)
}

/// CPU seconds the whole machine spent busy (every core: user, nice,
/// system, interrupts, steal; not idle or waiting for I/O), and its
/// number of cores: a round's share of the machine it kept busy.
pub fn machine_busy_seconds() -> Option<(f64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut lines = stat.lines();
    let total: Vec<u64> = lines
        .next()?
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    let cores = lines.filter(|line| line.starts_with("cpu")).count();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| total.get(i)).sum();
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((busy as f64 / per_second as f64, cores))
}

/// The process listening on the broker's port 5672 (RabbitMQ's
/// `beam.smp`), as `ss` names it; None if `ss` cannot tell.
pub fn broker_pid() -> Option<u32> {
    let output = std::process::Command::new("ss")
        .args(["-Hltnp", "sport = :5672"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let after = &text[text.find("pid=")? + 4..];
    after[..after.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

/// The peak resident set size of process `pid` (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A started contestant (or helper) and where its output goes.
pub struct Service {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `command` with stderr (and stdout unless piped) in `log`.
    pub fn start(name: &str, mut command: Command, log: &Path, pipe_stdout: bool) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)?;
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone()?)
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Fails if it has exited (it should still be running).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!("{} exited early ({status}){}", self.name, self.log_tail())),
        }
    }

    /// Waits for it to exit on its own; its stdout when piped.
    pub async fn output(self) -> anyhow::Result<String> {
        let Self { name, child, log } = self;
        let output = child.wait_with_output().await?;
        ensure!(
            output.status.success(),
            "{name} failed ({}){}",
            output.status,
            tail(&name, &log)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Sends `signal`, then waits (killing it after `STOP_TIMEOUT`).
    pub async fn signal_and_wait(&mut self, signal: i32) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill only sends a signal to our own child.
            unsafe { libc::kill(pid as i32, signal) };
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                Err(anyhow!("{} did not stop within {STOP_TIMEOUT:?}: killed", self.name))
            }
        }
    }

    /// SIGTERM, and it must exit cleanly.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = self.signal_and_wait(libc::SIGTERM).await?;
        ensure!(
            status.success(),
            "{} exited with {status}{}",
            self.name,
            self.log_tail()
        );
        Ok(())
    }

    /// The end of its log, to show with an error.
    pub fn log_tail(&self) -> String {
        tail(&self.name, &self.log)
    }
}

fn tail(name: &str, log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    format!("\n--- {name} ({}) ---\n{tail}", log.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_counts_every_core_and_its_busy_time_grows() {
        let (before, cores) = machine_busy_seconds().expect("/proc/stat is readable");
        assert_eq!(Some(cores), std::thread::available_parallelism().ok().map(usize::from));
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(spin.elapsed());
        }
        let (after, _) = machine_busy_seconds().unwrap();
        assert!(
            after > before,
            "busy {before} s, then {after} s after 100 ms of spinning"
        );
    }

    #[test]
    fn the_broker_is_the_process_on_port_5672() {
        let pid = broker_pid().expect("RabbitMQ listens on 127.0.0.1:5672 and ss names its process");
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(name.trim(), "beam.smp");
        assert!(cpu_seconds(pid).is_some());
    }
}
