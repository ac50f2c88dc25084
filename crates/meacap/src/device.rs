//! Choosing where tensors live: a GPU through wgpu (Vulkan, Metal, DX12; WebGPU in the browser)
//! or burn's pure-Rust `flex` CPU backend. The same model code runs on both.

use std::fmt;

use burn::prelude::*;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A GPU adapter when wgpu finds one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Wgpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" | "vulkan" | "metal" | "dx12" => Ok(Self::Wgpu),
            other => Err(format!("unknown device `{other}` (expected auto, cpu or wgpu)")),
        }
    }
}

/// Runs an asynchronous computation that ends in tensor read-backs to completion.
///
/// The library's stages are `async` because WebGPU in the browser can only read GPU memory
/// asynchronously. Natively this blocks on them; in the browser it succeeds only when nothing
/// has to wait (the CPU backend) and otherwise says to use the `*_async` form.
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    burn::tensor::try_read_sync(f).unwrap_or_else(|| {
        Err(Error::Device(
            "this device reads results back asynchronously (WebGPU in a browser): call the `_async` form".into(),
        ))
    })
}

/// A ready device and what it is, for messages and reports.
#[derive(Clone)]
pub struct SelectedDevice {
    pub device: Device,
    pub description: String,
    pub is_gpu: bool,
}

impl fmt::Debug for SelectedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl SelectedDevice {
    pub fn cpu() -> Self {
        // wasm32 has no threads (available_parallelism errs there).
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { device: Device::flex(), description: format!("CPU (burn flex, {threads} threads)"), is_gpu: false }
    }
}

/// Adapter facts wgpu reported when the device was opened.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

impl AdapterInfo {
    fn of(setup: &burn::tensor::wgpu::WgpuSetup) -> Self {
        let info = setup.adapter.get_info();
        Self {
            name: info.name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        }
    }

    /// `false` for software adapters (lavapipe, SwiftShader), which are slower than the CPU backend.
    pub fn is_hardware(&self) -> bool {
        !self.device_type.eq_ignore_ascii_case("Cpu")
    }

    pub fn describe(&self) -> String {
        format!("{} ({}, {}, wgpu)", self.name, self.backend, self.device_type)
    }
}

/// Whether `device` is the CPU backend (burn flex).
pub(crate) fn is_cpu(device: &Device) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_))
}

fn init_error(e: impl fmt::Display) -> Error {
    Error::Device(format!("no wgpu adapter could be opened: {e}"))
}

/// Settles CubeCL's autotune level before the first GPU kernel, unless `CUBECL_AUTOTUNE_LEVEL` says
/// otherwise. Below `full`, autotune stops trying candidate kernels once one comes close to the
/// device's roofline, which it first measures with probe kernels at every process start (burn's
/// on-disk caches are off in this build): ~8 s of GPU time on an H200, ~27 s on lavapipe. `full`
/// skips the probes; steady-state speed was the same (docs/benchmarks.md). A `cubecl.toml` is
/// still read; only the level is set.
fn configure_gpu_runtime() {
    #[cfg(not(target_family = "wasm"))]
    {
        use burn_cubecl::cubecl::config::{autotune::AutotuneLevel, CubeClRuntimeConfig, RuntimeConfig};
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_some() {
                return;
            }
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            config.autotune.level = AutotuneLevel::Full;
            // Fails only when CubeCL already read its configuration: then it stays as it was.
            if !CubeClRuntimeConfig::try_set(config) {
                tracing::debug!("CubeCL configuration already loaded; autotune level unchanged");
            }
        });
    }
}

#[cfg(not(target_family = "wasm"))]
static WGPU: std::sync::OnceLock<std::result::Result<(Device, AdapterInfo), String>> = std::sync::OnceLock::new();

/// The default wgpu adapter, opened once per process (burn's runtime can be initialised only once).
#[cfg(not(target_family = "wasm"))]
pub fn wgpu_device() -> Result<(Device, AdapterInfo)> {
    WGPU.get_or_init(|| {
        configure_gpu_runtime();
        let (device, setup) = Device::wgpu_options().init_with_setup().map_err(|e| format!("{e}"))?;
        Ok((device, AdapterInfo::of(&setup)))
    })
    .clone()
    .map_err(init_error)
}

/// Opens the default wgpu adapter asynchronously (the only way in a browser, where it is WebGPU).
/// burn's runtime can be initialised once: callers keep the result.
pub async fn open_wgpu_async() -> Result<(Device, AdapterInfo)> {
    configure_gpu_runtime();
    let (device, setup) = Device::wgpu_options().init_with_setup_async().await.map_err(init_error)?;
    Ok((device, AdapterInfo::of(&setup)))
}

/// Resolves a choice to a ready device. `Auto` falls back to the CPU when no adapter opens.
#[cfg(not(target_family = "wasm"))]
pub fn select(choice: DeviceChoice) -> Result<SelectedDevice> {
    let gpu = || {
        wgpu_device().map(|(device, info)| SelectedDevice { device, description: info.describe(), is_gpu: info.is_hardware() })
    };
    match choice {
        DeviceChoice::Cpu => Ok(SelectedDevice::cpu()),
        DeviceChoice::Wgpu => gpu(),
        DeviceChoice::Auto => match gpu() {
            // A software adapter (lavapipe, SwiftShader) is slower than the CPU backend.
            Ok(selected) if selected.is_gpu => Ok(selected),
            _ => Ok(SelectedDevice::cpu()),
        },
    }
}
