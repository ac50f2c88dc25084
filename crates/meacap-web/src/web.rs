//! wasm-bindgen API (see the crate docs).

use std::cell::RefCell;

use burn::prelude::Device;
use meacap::device::{open_wgpu_async, AdapterInfo, SelectedDevice};
use meacap::memory::{MemoryBank, MemoryOptions};
use meacap::pipeline::{
    CaptionDecoder, CaptionOptions, Captioner, ImageEncoder, PromptOrder, SceneGraphParser, Search, SentenceEncoder,
};
use meacap::MemFiles;
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
    install_console_logger();
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(text: &str);
    #[wasm_bindgen(js_namespace = console, js_name = warn)]
    fn console_warn(text: &str);
}

/// Forwards the runtime's warnings and errors to the browser console. On wasm, burn's wgpu
/// runtime reports what it cannot check synchronously (a shader the browser refuses to compile)
/// only through `log`; without a logger those reports vanish.
struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = format!("[{}] {}", record.target(), record.args());
        match record.level() {
            log::Level::Error => {
                console_error(&text);
                RUNTIME_ERRORS.with(|errors| {
                    let mut errors = errors.borrow_mut();
                    if errors.len() < 32 {
                        errors.push(text);
                    }
                });
            }
            _ => console_warn(&text),
        }
    }

    fn flush(&self) {}
}

thread_local! {
    static RUNTIME_ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The errors the runtime logged so far (the first 32), e.g. a GPU kernel the browser refused
/// to compile: results computed around such an error cannot be trusted.
#[wasm_bindgen(js_name = runtimeErrors)]
pub fn runtime_errors() -> Vec<String> {
    RUNTIME_ERRORS.with(|errors| errors.borrow().clone())
}

/// Installs [`ConsoleLogger`] unless the page installed another logger first.
pub fn install_console_logger() {
    static LOGGER: ConsoleLogger = ConsoleLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

thread_local! {
    // burn's wgpu runtime can be initialised once per page (worker); keep the outcome.
    static WEBGPU: RefCell<Option<Result<(Device, AdapterInfo), String>>> = const { RefCell::new(None) };
}

/// The page's WebGPU device (opened on first use), for Rust callers such as tests.
pub async fn webgpu_device() -> Result<Device, String> {
    webgpu().await.map(|(device, _)| device)
}

async fn webgpu() -> Result<(Device, AdapterInfo), String> {
    if let Some(done) = WEBGPU.with(|w| w.borrow().clone()) {
        return done;
    }
    install_console_logger();
    let opened = open_wgpu_async().await.map_err(|e| e.to_string());
    WEBGPU.with(|w| *w.borrow_mut() = Some(opened.clone()));
    opened
}

/// Streaming sha256, for files JS writes to its store without holding them whole.
#[wasm_bindgen]
pub struct Hasher(Sha256);

#[wasm_bindgen]
impl Hasher {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }
    /// Lowercase hex digest; the hasher can not be used afterwards.
    pub fn finish(self) -> String {
        crate::hex(&self.0.finalize())
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// One model file on its way into wasm memory: JS pushes it in chunks (a few MiB each, so the
/// file is never held twice), it is hashed as it arrives.
#[wasm_bindgen]
pub struct IncomingFile {
    name: String,
    size: u64,
    data: Vec<u8>,
    hasher: Sha256,
}

#[wasm_bindgen]
impl IncomingFile {
    /// `name` as the model folder names it (e.g. `config.json`, `1_Pooling/config.json`); `size`
    /// from the manifest.
    #[wasm_bindgen(constructor)]
    pub fn new(name: String, size: f64) -> Result<IncomingFile, JsError> {
        let size = size as u64;
        let mut data = Vec::new();
        data.try_reserve_exact(size as usize).map_err(|_| {
            JsError::new(&format!(
                "{name}: cannot reserve {:.1} MiB of WebAssembly memory (the 4 GiB wasm32 limit, or the tab's memory, is exhausted)",
                size as f64 / 1048576.0
            ))
        })?;
        Ok(IncomingFile { name, size, data, hasher: Sha256::new() })
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsError> {
        if (self.data.len() + chunk.len()) as u64 > self.size {
            return Err(JsError::new(&format!(
                "{}: more than the {} bytes the manifest announces",
                self.name, self.size
            )));
        }
        self.hasher.update(chunk);
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    #[wasm_bindgen(getter)]
    pub fn received(&self) -> f64 {
        self.data.len() as f64
    }
}

/// Which model a set of files makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Clip,
    Gpt2,
    Parser,
    Sbert,
    Viecap,
    Memory,
}

impl Role {
    fn parse(key: &str) -> Result<Self, JsError> {
        Ok(match key {
            "clip" => Self::Clip,
            "gpt2" => Self::Gpt2,
            "parser" => Self::Parser,
            "sbert" => Self::Sbert,
            "viecap" => Self::Viecap,
            "memory" => Self::Memory,
            other => return Err(JsError::new(&format!("unknown model role `{other}`"))),
        })
    }
}

/// The captioner being assembled model by model, then used.
#[wasm_bindgen]
pub struct Session {
    device: SelectedDevice,
    adapter: Option<AdapterInfo>,
    options: CaptionOptions,
    staged: Vec<(String, Vec<u8>)>,
    image: Option<ImageEncoder>,
    gpt2: Option<MemFiles>,
    decoder: Option<CaptionDecoder>,
    parser: Option<SceneGraphParser>,
    sbert: Option<SentenceEncoder>,
    memory: Option<MemoryBank>,
    captioner: Option<Captioner>,
}

#[wasm_bindgen]
impl Session {
    /// Opens the device: `"webgpu"` (fails when the browser exposes no adapter: the caller falls
    /// back to `"cpu"` and says so) or `"cpu"` (burn's flex backend, in this same wasm).
    pub async fn open(backend: String) -> Result<Session, JsError> {
        let (device, adapter) = match backend.as_str() {
            "webgpu" | "gpu" | "wgpu" => {
                let (device, info) = webgpu().await.map_err(|e| JsError::new(&e))?;
                let selected = SelectedDevice { device, description: info.describe(), is_gpu: true };
                (selected, Some(info))
            }
            "cpu" | "flex" => {
                let mut cpu = SelectedDevice::cpu();
                cpu.description = "CPU (burn flex in WebAssembly, one thread)".into();
                (cpu, None)
            }
            other => return Err(JsError::new(&format!("unknown backend `{other}` (expected webgpu or cpu)"))),
        };
        Ok(Session {
            device,
            adapter,
            options: CaptionOptions::default(),
            staged: Vec::new(),
            image: None,
            gpt2: None,
            decoder: None,
            parser: None,
            sbert: None,
            memory: None,
            captioner: None,
        })
    }

    /// What runs the models, for the page (`"SwiftShader Device (Vulkan, Cpu, wgpu)"`, ...).
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.device.description.clone()
    }

    /// `true` on WebGPU (whatever the adapter), `false` on the CPU backend.
    #[wasm_bindgen(getter, js_name = isWebgpu)]
    pub fn is_webgpu(&self) -> bool {
        self.adapter.is_some()
    }

    /// The WebGPU adapter is a software one (SwiftShader): slow, but WebGPU.
    #[wasm_bindgen(getter, js_name = isSoftwareAdapter)]
    pub fn is_software_adapter(&self) -> bool {
        self.adapter.as_ref().is_some_and(|a| !a.is_hardware())
    }

    /// Adds a received file to the model being assembled, after checking it against the
    /// manifest's size and sha256 (a mismatch is an error and the bytes are dropped).
    #[wasm_bindgen(js_name = addFile)]
    pub fn add_file(&mut self, file: IncomingFile, sha256: &str) -> Result<(), JsError> {
        let IncomingFile { name, size, data, hasher } = file;
        let digest = crate::hex(&hasher.finalize());
        crate::check_file(&name, data.len(), &digest, size, sha256).map_err(|e| JsError::new(&e))?;
        self.staged.push((name, data));
        Ok(())
    }

    /// Builds the model `role` (`clip`, `gpt2`, `parser`, `sbert`, `viecap`, `memory`) from the
    /// staged files and frees them. `label` names the model in errors; for `viecap`, `file` is
    /// the checkpoint's file name.
    pub fn load(&mut self, role: &str, label: &str, file: Option<String>) -> Result<(), JsError> {
        let role = Role::parse(role)?;
        let mut files = MemFiles::new(label);
        for (name, data) in self.staged.drain(..) {
            files.insert(name, data);
        }
        let device = self.device.device.clone();
        match role {
            Role::Clip => self.image = Some(ImageEncoder::load(&files, &device).map_err(js_error)?),
            // The GPT-2 folder is only a tokenizer and a config: kept until the checkpoint comes.
            Role::Gpt2 => self.gpt2 = Some(files),
            Role::Viecap => {
                let gpt2 = self
                    .gpt2
                    .as_ref()
                    .ok_or_else(|| JsError::new("load the gpt2 tokenizer/config before the ViECap checkpoint"))?;
                let name = file.ok_or_else(|| JsError::new("viecap: the checkpoint's file name is missing"))?;
                let decoder = CaptionDecoder::load(gpt2, &files, &name, self.options.mapping_heads, &device)
                    .map_err(js_error)?;
                self.decoder = Some(decoder);
            }
            Role::Parser => self.parser = Some(SceneGraphParser::load(&files, &device).map_err(js_error)?),
            Role::Sbert => self.sbert = Some(SentenceEncoder::load(&files, &device).map_err(js_error)?),
            Role::Memory => {
                let bank = MemoryBank::load(&files, &MemoryOptions::default(), &device).map_err(js_error)?;
                self.memory = Some(bank);
            }
        }
        Ok(())
    }

    /// Assembles the captioner once every model is loaded; names what is missing otherwise.
    pub fn finish(&mut self) -> Result<(), JsError> {
        let missing: Vec<&str> = [
            ("clip", self.image.is_none()),
            ("viecap", self.decoder.is_none()),
            ("parser", self.parser.is_none()),
            ("sbert", self.sbert.is_none()),
            ("memory", self.memory.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, gone)| gone.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(JsError::new(&format!("models not loaded yet: {}", missing.join(", "))));
        }
        let (Some(image), Some(decoder), Some(parser), Some(sbert), Some(memory)) =
            (self.image.take(), self.decoder.take(), self.parser.take(), self.sbert.take(), self.memory.take())
        else {
            unreachable!("checked above");
        };
        let captioner =
            Captioner::from_parts(image, decoder, parser, sbert, memory, &self.device.device, self.options.clone())
                .map_err(js_error)?;
        self.captioner = Some(captioner);
        self.gpt2 = None;
        Ok(())
    }

    #[wasm_bindgen(getter)]
    pub fn ready(&self) -> bool {
        self.captioner.is_some()
    }

    /// Decoding settings: `order` is `hard-first` (default), `soft-first` or `only-hard`;
    /// `beam_width` 0 means greedy.
    #[wasm_bindgen(js_name = setOptions)]
    pub fn set_options(&mut self, order: &str, beam_width: u32, memory_captions: u32) -> Result<(), JsError> {
        let prompt_order = match order {
            "hard-first" => PromptOrder::HardFirst,
            "soft-first" => PromptOrder::SoftFirst,
            "only-hard" => PromptOrder::OnlyHard,
            other => return Err(JsError::new(&format!("unknown prompt order `{other}`"))),
        };
        let search = if beam_width == 0 { Search::Greedy } else { Search::Beam { width: beam_width as usize } };
        self.options.prompt_order = prompt_order;
        self.options.search = search;
        self.options.memory_caption_num = (memory_captions as usize).max(1);
        if let Some(captioner) = &mut self.captioner {
            captioner.options = self.options.clone();
        }
        Ok(())
    }

    /// Captions an encoded image; returns the same JSON object as `meacap-wgpu caption --json`.
    pub async fn caption(&self, image: Vec<u8>, name: String) -> Result<String, JsError> {
        let captioner = self.captioner.as_ref().ok_or_else(|| JsError::new("the models are not loaded yet"))?;
        let caption = captioner.caption_async(&image, &name).await.map_err(js_error)?;
        let mut value = serde_json::to_value(&caption).map_err(js_error)?;
        value["image"] = serde_json::Value::String(name);
        serde_json::to_string(&value).map_err(js_error)
    }

    /// Captions with the blocking API, which only works where read-backs complete at once (the
    /// CPU backend). Tests use it to show that a WebGPU session really reads back asynchronously.
    #[wasm_bindgen(js_name = captionBlocking)]
    pub fn caption_blocking(&self, image: Vec<u8>, name: String) -> Result<String, JsError> {
        let captioner = self.captioner.as_ref().ok_or_else(|| JsError::new("the models are not loaded yet"))?;
        let caption = captioner.caption(&image, &name).map_err(js_error)?;
        serde_json::to_string(&caption).map_err(js_error)
    }
}
