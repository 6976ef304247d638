//! The policy file (`run --config FILE`, TOML).
#![no_main]

use ingress_xdp::config::FileConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(config) = FileConfig::parse(text) else {
        return;
    };
    // What parse accepts is usable as is.
    assert_ne!(config.resync_interval, Some(0), "{text:?}");
    let patterns = |list: &Option<Vec<String>>| list.as_ref().map_or(0, Vec::len);
    assert_eq!(
        FileConfig::patterns(&config.allow_services).len(),
        patterns(&config.allow_services),
        "{text:?}: an accepted allow pattern does not parse"
    );
    assert_eq!(
        FileConfig::patterns(&config.block_services).len(),
        patterns(&config.block_services),
        "{text:?}: an accepted block pattern does not parse"
    );
    // Parsing is a function of the text.
    assert_eq!(FileConfig::parse(text).ok().as_ref(), Some(&config));
});
