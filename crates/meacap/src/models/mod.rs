//! One file per network. Each has a `Config` deserialised from the checkpoint's own `config.json`
//! and modules whose field names mirror the checkpoint's keys.
