//! ebbtide's configuration: the TOML schema with serde, defaults, human durations, and validation
//! whose every error names the file, line, column and key path. Also the few primitives the other
//! crates share (core time, a seeded RNG), since this crate is the one they all depend on.

pub mod rng;
mod schema;
pub mod service_time;
pub mod time;
mod validate;

pub use schema::*;
pub use validate::{ConfigError, ConfigErrors};

/// The embedded default: what `ebbtide serve` runs with no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../examples/default.toml");

impl Config {
    /// Parses and validates TOML text; `file` is only used in error messages.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        validate::load(text, file)
    }

    /// Reads, parses and validates a file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                col: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::from_toml(&text, &file)
    }

    /// The embedded default config.
    pub fn embedded_default() -> Config {
        Config::from_toml(EMBEDDED_DEFAULT, "<embedded default>")
            .expect("the embedded default config is valid (checked by a test)")
    }
}
