//! The browser console, for what the page does not show (bound directly: web-sys's `console`
//! feature would rebuild wgpu's web-sys for two functions).

use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = debug)]
    pub fn debug(message: &str);
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    pub fn error(message: &str);
}
