//! Protocol decoding of arbitrary datagrams (both directions): no panic, and what decodes re-encodes to the same message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    barkeep_daemon::fuzzing::decode(data);
});
