#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| onebyte_fuzz::message_round_trips(bytes));
