//! A process's CPU time and memory, read from `/proc/PID` (Linux).

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// utime + stime of all its threads, in µs (clock-tick resolution).
    pub cpu_us: u64,
    /// VmRSS.
    pub rss_kib: u64,
    /// VmHWM: the peak RSS since the start or the last [`reset_peak_rss`].
    pub hwm_kib: u64,
}

/// CPU time and memory of `pid`; `None` if it is gone or unreadable.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Sample {
        cpu_us: (utime + stime) * 1_000_000 / clock_ticks_per_s(),
        rss_kib: status_kib(pid, "VmRSS:")?,
        hwm_kib: status_kib(pid, "VmHWM:")?,
    })
}

/// A `kB` field of `/proc/PID/status`, named with its colon (`"VmRSS:"`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Reset VmHWM to the current RSS, so the next reading is the peak from now on.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}
