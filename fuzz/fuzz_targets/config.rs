//! The config load path, `Config::from_toml` (TOML parse, then validation): any text gets a
//! config or errors that name a line and a key, never a panic. Also renders the errors and the
//! summary, as `ebbtide check` does, since their line and column arithmetic reads the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ebbtide_config::Config::from_toml(text, "fuzz.toml") {
        Ok(cfg) => {
            let _ = cfg.summary();
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error result with no error");
            let _ = errors.to_string();
        }
    }
});
