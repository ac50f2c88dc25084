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

fn init_error(e: impl fmt::Display) -> Error {
    Error::Device(format!("no wgpu adapter could be opened: {e}"))
}

/// burn's fusion optimisation that this crate turns off on GPUs (see [`configure_fusion`]).
const SLOW_FUSION: &str = "ReduceBroadcasted";

/// Turns off burn's "reduce-broadcasted" fusion before the first GPU tensor operation. It fuses
/// a reduction with the arithmetic that broadcasts its result back and a second reduction
/// (LayerNorm: mean → centre → variance → scale) into one kernel that reduces each row on a
/// single GPU thread: 0.2-0.3 ms for the five rows of a decoding step on an H200, over half of a
/// GPT-2 step. Without it the same operations fuse into ordinary parallel reductions and
/// elementwise kernels. The registry only changes before burn's fusion service starts; if a
/// device was opened earlier in the process, the setting stays as it was.
fn configure_fusion() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = burn_cubecl::fusion::remove(SLOW_FUSION) {
            tracing::debug!("burn fusion settings unchanged: {e}");
        }
    });
}

#[cfg(not(target_family = "wasm"))]
static WGPU: std::sync::OnceLock<std::result::Result<(Device, AdapterInfo), String>> = std::sync::OnceLock::new();

/// The default wgpu adapter, opened once per process (burn's runtime can be initialised only once).
#[cfg(not(target_family = "wasm"))]
pub fn wgpu_device() -> Result<(Device, AdapterInfo)> {
    WGPU.get_or_init(|| {
        configure_fusion();
        let (device, setup) = Device::wgpu_options().init_with_setup().map_err(|e| format!("{e}"))?;
        Ok((device, AdapterInfo::of(&setup)))
    })
    .clone()
    .map_err(init_error)
}

/// Opens the default wgpu adapter asynchronously (the only way in a browser, where it is WebGPU).
/// burn's runtime can be initialised once: callers keep the result.
pub async fn open_wgpu_async() -> Result<(Device, AdapterInfo)> {
    configure_fusion();
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_fusion_turned_off_exists_in_this_burn() {
        // `remove` ignores unknown names: a rename in burn would silently bring the kernel back.
        assert!(burn_cubecl::fusion::BUILTIN_NAMES.contains(&super::SLOW_FUSION));
    }
}
