//! A live progress bar over a timed run, showing the current rate.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Ticks a bar every 200 ms until the run's time is up.
pub(crate) struct Ticker {
    bar: ProgressBar,
}

impl Ticker {
    /// Starts a bar over `duration`, reporting the rate of `count` per second.
    pub(crate) fn start(duration: Duration, count: Rc<Cell<u64>>) -> Self {
        let bar = ProgressBar::new(duration.as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let shown = bar.clone();
        stratus_uring::spawn(async move {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            while !shown.is_finished() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let (now, n) = (Instant::now(), count.get());
                let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, n);
                shown.set_position(started.elapsed().as_millis() as u64);
                shown.set_message(format!("{rate:>12.0} /s"));
            }
        });
        Self { bar }
    }

    pub(crate) fn finish(self) {
        self.bar.finish_and_clear();
    }
}
