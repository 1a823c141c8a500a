//! Time in a browser: `std::time::Instant` does not exist on wasm32-unknown-unknown.

use gloo_timers::future::TimeoutFuture;
use wasm_bindgen::{JsCast, JsValue};

thread_local! {
    /// The global scope's `performance` (a window's or a worker's), looked up once.
    static PERFORMANCE: Option<web_sys::Performance> =
        js_sys::Reflect::get(&js_sys::global(), &"performance".into())
            .ok()
            .and_then(|p| p.dyn_into::<web_sys::Performance>().ok());
}

/// Milliseconds on the browser's monotonic clock (`performance.now()`), with a fraction:
/// `Date.now()` ticks in whole milliseconds, and one CPU step of a small model is a fraction of
/// one, so its time and the busy share would read 0 or 1 ms. `Date.now()` where there is no
/// `performance`.
pub fn now_ms() -> f64 {
    PERFORMANCE.with(|p| p.as_ref().map_or_else(js_sys::Date::now, |p| p.now()))
}

/// Waits `ms` milliseconds (0 still yields to the event loop, so websocket and page messages
/// get their turn).
pub async fn sleep_ms(ms: f64) {
    if ms <= 0.0
        && let Some(Ok(turn)) = YIELD.with(|y| y.as_ref().map(|f| f.call0(&JsValue::UNDEFINED)))
    {
        let _ = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::from(turn)).await;
        return;
    }
    TimeoutFuture::new(ms.clamp(0.0, 60_000.0) as u32).await;
}

thread_local! {
    /// The worker's `onebyteYield` (`web/peer-worker.js`): a turn of the event loop through a
    /// posted message, where `setTimeout(0)` would wait its 4 ms clamp once nested.
    static YIELD: Option<js_sys::Function> =
        js_sys::Reflect::get(&js_sys::global(), &"onebyteYield".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
}

/// The browser's clock, for the peer driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrowserClock;

impl engine::driver::Clock for BrowserClock {
    fn now_ms(&self) -> f64 {
        now_ms()
    }

    async fn sleep_ms(&self, ms: f64) {
        sleep_ms(ms).await;
    }
}
