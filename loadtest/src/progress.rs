//! A live progress bar over a timed run, showing the current rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Ticks a bar every 200 ms, from its own thread, until finished.
pub(crate) struct Ticker {
    done: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Ticker {
    /// Starts a bar over `duration`, reporting the rate of `count` per second.
    pub(crate) fn start(duration: Duration, count: Arc<AtomicU64>) -> Self {
        let bar = ProgressBar::new(duration.as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let (now, n) = (Instant::now(), count.load(Ordering::Relaxed));
                let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, n);
                bar.set_position(started.elapsed().as_millis() as u64);
                bar.set_message(format!("{rate:>12.0} /s"));
            }
            bar.finish_and_clear();
        });
        Self { done, thread }
    }

    pub(crate) fn finish(self) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
