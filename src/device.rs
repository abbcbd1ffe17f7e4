//! The compute device (`cpu` or `cuda:N`) and the threads compute runs on. Nothing outside
//! this module names a backend. A base module: it imports no other part of kiln, so the
//! configuration, the model and the batcher can all depend on it.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// A device that cannot be opened: says which and why.
#[derive(Debug, thiserror::Error)]
#[error("device: {0}")]
pub struct DeviceError(String);

/// The device a server's workers run on, as the operator wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device '{other}': expected 'cpu' or 'cuda:N'")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. Asking for CUDA in a build without the `cuda` feature is an error
    /// that says how to get one.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(DeviceError(format!(
                        "device {self} requested, but this kiln was built without CUDA support; \
                         rebuild with `cargo build --release --features cuda`"
                    )));
                }
                Device::new_cuda(n).map_err(|e| DeviceError(format!("cannot open {self}: {e}")))
            }
        }
    }
}

/// Runs `work` on a new thread named `name` that is the first thread of a rayon pool of its
/// own with `threads` threads (candle's intra-op threads for that work), and returns once it
/// has started.
///
/// candle splits some CPU ops with rayon (`softmax_last_dim`, the norms, conv, GEMMs when
/// `threads > 1`). Called from a thread outside any pool, each such op is handed to rayon's
/// global pool while the caller sleeps: two thread wake-ups per op, and every caller's ops
/// queued on the one global pool. Running *on* a pool of its own, the work's ops run on its
/// thread (and, with `threads > 1`, on that pool's others). When `work` returns the pool's
/// threads exit.
pub fn spawn_compute(
    name: String,
    threads: usize,
    work: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(move |t| {
            if t == 0 {
                name.clone()
            } else {
                format!("{name}.{t}")
            }
        })
        // The work catches its own panics; anything else is logged, not a process abort.
        .panic_handler(|_| tracing::error!("a compute thread panicked"))
        .build()
        .map_err(std::io::Error::other)?;
    pool.spawn(work);
    // Dropping the handle lets the pool's threads exit once `work` has returned.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        if !cfg!(feature = "cuda") {
            let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
