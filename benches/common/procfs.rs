//! What /proc says about a process or one of this process's threads: CPU time and memory.

use std::{fs, path::Path};

/// CPU seconds of a process, or of one thread with `/proc/<pid>/task/<tid>`. Sums the
/// nanosecond run time of each thread from `schedstat` when the kernel has it (utime +
/// stime in `stat` only tick every 10 ms, too coarse for a 10 s point at 200 req/s),
/// else utime + stime from `stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let mut ns = 0u64;
    let mut ok = false;
    for task in tasks {
        if let Some(v) = schedstat_ns(&task.path()) {
            ns += v;
            ok = true;
        }
    }
    if ok { ns as f64 / 1e9 } else { stat_cpu_seconds(&format!("/proc/{pid}")) }
}

/// CPU seconds of a process from utime + stime alone, in 10 ms ticks: enough over seconds
/// of a saturated server (the identity bench).
pub fn tick_cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}"))
}

/// CPU seconds of one thread of this process.
pub fn thread_cpu_seconds(tid: i32) -> f64 {
    let dir = format!("/proc/self/task/{tid}");
    match schedstat_ns(Path::new(&dir)) {
        Some(ns) => ns as f64 / 1e9,
        None => stat_cpu_seconds(&dir),
    }
}

fn schedstat_ns(dir: &Path) -> Option<u64> {
    fs::read_to_string(dir.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()
}

/// utime + stime (fields 14 and 15 of `stat`).
fn stat_cpu_seconds(dir: &str) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("{dir}/stat")) else {
        return f64::NAN;
    };
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return f64::NAN;
    };
    let f: Vec<u64> =
        rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if f.len() == 2 { (f[0] + f[1]) as f64 / hz } else { f64::NAN }
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); 0 when it cannot be read.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident set size.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size since the process started.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}
