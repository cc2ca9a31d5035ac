//! Swap space for a test that has the kernel swap pages out: the
//! machine's own when it has some, else a swap file of the test's, turned
//! off and removed when the test ends. Making one needs root, as CI has;
//! without it the test fails and says so, rather than pass having swapped
//! nothing out.

use std::path::PathBuf;
use std::process::Command;

/// Swap that stays on while this lives.
pub struct Swap {
    /// The swap file this test turned on, if the machine had none.
    own_file: Option<PathBuf>,
}

/// Swap space, the machine's or a new file's.
pub fn active() -> Swap {
    if machine_has_swap() {
        return Swap { own_file: None };
    }
    // On the root filesystem: a swap file cannot live on tmpfs.
    let file = PathBuf::from(format!("/var/tmp/passerelle-test-swap-{}", std::process::id()));
    let path = file.to_str().unwrap();
    run(&["fallocate", "--length", "512MiB", path]);
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    run(&["mkswap", path]);
    run(&["swapon", path]);
    Swap { own_file: Some(file) }
}

impl Drop for Swap {
    fn drop(&mut self) {
        if let Some(file) = &self.own_file {
            let _ = Command::new("swapoff").arg(file).status();
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Whether a swap area is on (`/proc/swaps` lists one under its header).
fn machine_has_swap() -> bool {
    let swaps = std::fs::read_to_string("/proc/swaps").expect("reading /proc/swaps");
    swaps.lines().count() > 1
}

fn run(command: &[&str]) {
    let output = Command::new(command[0])
        .args(&command[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs swap; the machine has none and `{}` failed: {e}",
                command[0]
            )
        });
    assert!(
        output.status.success(),
        "this test needs swap; the machine has none and `{}` failed (it needs root): {}",
        command.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Asks the kernel to page out every private writable mapping of this
/// process (`MADV_PAGEOUT`), and returns how many KiB of it are then in
/// swap (`VmSwap`).
pub fn page_out_this_process() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("reading /proc/self/maps");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some("rw-p")) = (fields.next(), fields.next()) else {
            continue;
        };
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        // SAFETY: MADV_PAGEOUT only moves pages to swap; their contents
        // stay the same to the process. A mapping the kernel cannot page
        // out (a locked one, say) is refused and left as it is.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
    }
    swapped_kib()
}

/// `VmSwap` of this process, in KiB.
fn swapped_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmSwap:"))
        .expect("VmSwap in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
