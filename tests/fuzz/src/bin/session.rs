#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| onebyte_fuzz::session_survives_any_relay(bytes));
