//! safetensors reader (placeholder, see helper).
