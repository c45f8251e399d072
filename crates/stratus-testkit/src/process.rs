//! The process of an outside service a handle owns: signalled, ended, started again on its
//! port. One way for every service ([`crate::Redis`], [`crate::RedisCluster`],
//! [`crate::Nats`]).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::free_addr;

/// Sends `child` the signal `name` (`STOP` freezes it, `CONT` thaws it).
pub(crate) fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Kills `child` (SIGKILL) and reaps it; one already gone is no error.
pub(crate) fn end(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What `start` gives once it starts `program` on a free port (another, if a concurrent
/// test took the one found free before `program` bound it: 5 tries).
pub(crate) fn start_on_a_free_port<T>(program: &str, start: impl FnMut(u16) -> Option<T>) -> T {
    (0..5)
        .map(|_| free_addr().port())
        .find_map(start)
        .unwrap_or_else(|| panic!("{program} did not start on any of 5 free ports"))
}

/// What `start` gives once it starts `program` on `port` again. The port may be briefly
/// taken still (a connection of the stopped server's in `TIME_WAIT`, another test's
/// client on it): it tries again for up to 10 s before giving up.
pub(crate) fn start_again<T>(program: &str, port: u16, mut start: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(started) = start() {
            return started;
        }
        assert!(
            Instant::now() < deadline,
            "{program} could not take its port {port} again within 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
