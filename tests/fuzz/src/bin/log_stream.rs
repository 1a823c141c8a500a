#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| onebyte_fuzz::log_stream_is_consistent(bytes));
