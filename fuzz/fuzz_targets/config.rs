//! Configuration parsing of arbitrary text: no panic, and what loads can be explained.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    barkeep_daemon::fuzzing::config(data);
});
