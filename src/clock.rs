//! The loop's clock: the same clock as `time.monotonic()`, at full resolution.
//!
//! # Implementation notes
//! CPython's `time.monotonic()` reads `CLOCK_MONOTONIC` and turns whole nanoseconds into a
//! float by one division; doing the same keeps `loop.time()` and `time.monotonic()`
//! interchangeable (user code mixes them, and uvloop's millisecond clock broke that).

/// Seconds on the monotonic clock, as `time.monotonic()` reports them.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux
    // and macOS, so the call cannot fail with these arguments.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // `time_t` and `c_long` are i64 on 64-bit Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let nanos = ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64;
    nanos as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::monotonic;

    #[test]
    fn never_goes_backwards() {
        let mut last = monotonic();
        for _ in 0..10_000 {
            let now = monotonic();
            assert!(now >= last);
            last = now;
        }
    }
}
