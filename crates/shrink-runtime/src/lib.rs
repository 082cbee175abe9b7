//! The runtime of shrink: one interpreter of the IR on burn tensors, generic over the backend,
//! serving perplexity, generation and (later) calibration capture and training.
//!
//! Backends are instantiated here and nowhere else: [`Engine`] holds an interpreter on the CPU
//! (burn-ndarray) or, with the `cuda` feature, on an NVIDIA GPU (burn-cuda).

pub mod calibrate;
mod cpu;
pub mod error;
pub mod eval;
pub mod generate;
mod host_attention;
pub mod interp;
pub mod train;

use std::fmt;
use std::str::FromStr;

pub use error::{Result, RuntimeError};
pub use eval::{Perplexity, PerplexityOptions, Scoring};
pub use generate::SampleOptions;
pub use interp::{ExecOptions, Interpreter, KvCache, QuantExec};

use shrink_ir::Model;

/// The CPU backend.
pub type Cpu = burn_ndarray::NdArray<f32>;
/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Gpu = burn_cuda::Cuda<f32, i32>;

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (cpu, cuda, cuda:N)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A model loaded on a device.
pub enum Engine {
    Cpu(Interpreter<Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(Interpreter<Gpu>, usize),
}

macro_rules! dispatch {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Engine::Cpu($m) => $body,
            #[cfg(feature = "cuda")]
            Engine::Cuda($m, _) => $body,
        }
    };
}

impl Engine {
    /// Verifies the model and uploads it to the device, with the default [`ExecOptions`]
    /// (quantized weights streamed).
    pub fn new(model: &Model, device: Device) -> Result<Engine> {
        Self::with_options(model, device, ExecOptions::default())
    }

    /// Verifies the model and uploads it to the device, running quantized weights as `opts`
    /// says.
    pub fn with_options(model: &Model, device: Device, opts: ExecOptions) -> Result<Engine> {
        match device {
            Device::Cpu => Ok(Engine::Cpu(Interpreter::with_options(
                model,
                &burn_ndarray::NdArrayDevice::Cpu,
                opts,
            )?)),
            Device::Cuda(i) => cuda_engine(model, i, opts),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Engine::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Engine::Cuda(_, i) => Device::Cuda(*i),
        }
    }

    pub fn vocab_size(&self) -> usize {
        dispatch!(self, m => m.vocab_size())
    }

    pub fn max_positions(&self) -> usize {
        dispatch!(self, m => m.max_positions())
    }

    /// Logits of a batch of sequences, `[b][s][vocab]` flattened row-major.
    pub fn logits(&self, tokens: &[Vec<u32>]) -> Result<Vec<f32>> {
        dispatch!(self, m => m
            .forward(tokens, None)?
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| RuntimeError::Input(format!("reading logits back: {e:?}"))))
    }

    pub fn perplexity(
        &self,
        tokens: &[u32],
        opts: PerplexityOptions,
        progress: eval::Progress<'_>,
    ) -> Result<Perplexity> {
        dispatch!(self, m => eval::perplexity(m, tokens, opts, progress))
    }

    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &SampleOptions,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Vec<u32>> {
        dispatch!(self, m => generate::generate(m, prompt, opts, on_token))
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_engine(_model: &Model, _index: usize, _opts: ExecOptions) -> Result<Engine> {
    Err(RuntimeError::Device(
        "this shrink was built without CUDA support; rebuild with `--features cuda`".into(),
    ))
}

#[cfg(feature = "cuda")]
fn cuda_engine(model: &Model, index: usize, opts: ExecOptions) -> Result<Engine> {
    let device = cuda_device(index)?;
    Ok(Engine::Cuda(
        Interpreter::with_options(model, &device, opts)?,
        index,
    ))
}

/// Peak resident memory of this process so far (Linux: `VmHWM` of `/proc/self/status`); `None`
/// where the system does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Creates a CUDA device, turning burn's panic on a machine without a usable GPU into an error.
#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<burn_cuda::CudaDevice> {
    use burn::tensor::Tensor;
    let no_driver = !std::path::Path::new("/proc/driver/nvidia/version").exists()
        && !std::path::Path::new("/dev/nvidia0").exists();
    if no_driver {
        return Err(RuntimeError::Device(
            "no NVIDIA GPU driver found on this machine (use --device cpu)".into(),
        ));
    }
    // burn panics when the driver or NVRTC cannot be used, often in its device thread, whose
    // message is the one that says why: keep every panic message of the probe.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let hook = std::panic::take_hook();
    let sink = seen.clone();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut v) = sink.lock() {
            v.push(info.to_string());
        }
    }));
    let probe = std::panic::catch_unwind(|| {
        let device = burn_cuda::CudaDevice::new(index);
        let t = Tensor::<Gpu, 1>::from_floats([1.0f32, 2.0], &device);
        let _ = t.sum().into_scalar();
        device
    });
    std::panic::set_hook(hook);
    probe.map_err(|_| {
        let msgs = seen.lock().map(|v| v.join("; ")).unwrap_or_default();
        RuntimeError::Device(format!(
            "cannot use CUDA device {index} (is the NVIDIA driver's libcuda, not a toolkit stub, \
             first on the library path, and NVRTC installed?): {msgs}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_high_water_mark() {
        let status = "Name:\tshrink\nVmPeak:\t  900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12345 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS:\t 100 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t lots kB\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }
}
