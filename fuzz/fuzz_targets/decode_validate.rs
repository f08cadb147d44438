//! A request datagram through decode, validation and policy against a fixed config: no panic, and no accepted slice that breaks alignment, bounds, mappable areas, reserved ranges, windows, access or wc rules.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    barkeep_daemon::fuzzing::decode_validate(data);
});
