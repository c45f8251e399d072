//! Keeping the load generator and the server on different cores, so a measurement says
//! what the server can do, not what they do when they fight for one core.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, bail};

/// Pins the calling thread (the generator runs on one thread) to `cpu`.
pub(crate) fn client(cpu: Option<usize>) -> anyhow::Result<()> {
    if let Some(id) = cpu
        && !core_affinity::set_for_current(core_affinity::CoreId { id })
    {
        bail!("could not pin the load generator to cpu {id}");
    }
    Ok(())
}

/// Pins every thread of process `pid` to `cpu` (with taskset).
pub(crate) fn server(cpu: Option<usize>, pid: Option<u32>) -> anyhow::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    let pid = pid.context("--server-cpu needs --server-pid")?;
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset could not pin pid {pid} to cpu {cpu}");
    }
    Ok(())
}

/// The resident set size of `pid`, in bytes.
pub(crate) fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

/// The command name of process `pid` (`/proc/PID/comm`: `redis-server`, `stratus`).
pub(crate) fn process_name(pid: u32) -> anyhow::Result<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .with_context(|| format!("no process {pid}"))?;
    Ok(comm.trim_end().to_owned())
}

/// Clock ticks per second in `/proc` times (`USER_HZ`: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// The CPU time process `pid` has used so far, all its threads, in user mode and in all,
/// in seconds (`utime`, and `utime` + `stime`, of `/proc/PID/stat`, to 10 ms).
fn cpu_seconds(pid: u32) -> anyhow::Result<CpuSeconds> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        let field = fields.get(i).context("short /proc/PID/stat")?;
        Ok(field.parse()?)
    };
    let (user, system) = (ticks(11)? as f64, ticks(12)? as f64);
    Ok(CpuSeconds {
        user: user / USER_HZ,
        all: (user + system) / USER_HZ,
    })
}

/// CPU seconds of a process: in user mode (its own code: what the kernel does for it, and
/// the softirq work that lands on it by chance, are not in there), and in all.
#[derive(Clone, Copy)]
struct CpuSeconds {
    user: f64,
    all: f64,
}

/// The nanoseconds each thread of process `pid` has run so far, by thread id (the first
/// field of `/proc/PID/task/TID/schedstat`), or `None` where the kernel keeps no schedstat.
fn thread_runtimes(pid: u32) -> Option<BTreeMap<u32, u64>> {
    let mut runtimes = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let entry = entry.ok()?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that ended since the listing is left out (then the sample is not used).
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        runtimes.insert(tid, stat.split_whitespace().next()?.parse().ok()?);
    }
    Some(runtimes)
}

/// The seconds the threads ran between two samples of [`thread_runtimes`], if every thread
/// of the first is in the second (a thread that ended took its time with it).
fn runtime_between(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> Option<f64> {
    if !before.keys().all(|tid| after.contains_key(tid)) {
        return None;
    }
    let sum = |m: &BTreeMap<u32, u64>| m.values().sum::<u64>();
    Some(sum(after).saturating_sub(sum(before)) as f64 / 1e9)
}

/// The CPU time a process uses over a measurement (all its threads, user and system):
/// start it, then read the seconds.
pub(crate) struct ProcessCpu {
    pid: u32,
    start: CpuSeconds,
    /// Each thread's runtime at the start, to the nanosecond (where the kernel keeps it).
    start_threads: Option<BTreeMap<u32, u64>>,
}

impl ProcessCpu {
    pub(crate) fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            pid,
            start_threads: thread_runtimes(pid),
            start: cpu_seconds(pid)?,
        })
    }

    /// The process watched.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The CPU seconds process `pid` used since `start`: to the nanosecond from its
    /// threads' schedstat where the kernel keeps it and no thread ended meanwhile, else to
    /// 10 ms from `/proc/PID/stat` (at a fixed publish rate a server may use a few tens of
    /// milliseconds in a run, where 10 ms steps would blur the figure).
    pub(crate) fn seconds(&self) -> anyhow::Result<f64> {
        let precise = self.start_threads.as_ref().and_then(|before| {
            let after = thread_runtimes(self.pid)?;
            runtime_between(before, &after)
        });
        match precise {
            Some(s) => Ok(s),
            None => Ok(cpu_seconds(self.pid)?.all - self.start.all),
        }
    }

    /// The CPU seconds process `pid` spent in user mode since `start` (to 10 ms).
    pub(crate) fn user_seconds(&self) -> anyhow::Result<f64> {
        Ok(cpu_seconds(self.pid)?.user - self.start.user)
    }
}

/// Jiffies CPU `cpu` spent busy and in total so far (from /proc/stat).
fn cpu_times(cpu: usize) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))
        .with_context(|| format!("no cpu{cpu} in /proc/stat"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    Ok((total - idle, total))
}

/// How busy a CPU is over a measurement: start it, then read the busy fraction.
pub(crate) struct CpuWatch {
    cpu: usize,
    start: (u64, u64),
}

impl CpuWatch {
    pub(crate) fn start(cpu: usize) -> anyhow::Result<Self> {
        Ok(Self {
            cpu,
            start: cpu_times(cpu)?,
        })
    }

    /// The fraction (0 to 1) of the time since `start` the CPU was busy.
    pub(crate) fn busy(&self) -> anyhow::Result<f64> {
        let (busy, total) = cpu_times(self.cpu)?;
        let (b0, t0) = self.start;
        Ok((busy - b0) as f64 / (total - t0).max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn thread_runtimes_count_only_when_no_thread_ended() {
        let before = BTreeMap::from([(1, 1_000_000_000), (2, 500_000_000)]);
        // Thread 3 started since: all its time is in the window.
        let after = BTreeMap::from([(1, 1_250_000_000), (2, 500_000_000), (3, 10_000_000)]);
        assert_eq!(runtime_between(&before, &after), Some(0.26));
        // Thread 2 ended, taking its time with it: no precise figure.
        let ended = BTreeMap::from([(1, 1_250_000_000)]);
        assert_eq!(runtime_between(&before, &ended), None);
    }

    #[test]
    fn this_process_cpu_grows_as_it_works() {
        let cpu = ProcessCpu::start(std::process::id()).unwrap();
        // Some 50 ms of work on any machine of this decade (a fixed amount, not a time).
        let mut x = 0u64;
        for i in 0..100_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(cpu.seconds().unwrap() > 0.0, "{x}");
    }
}
