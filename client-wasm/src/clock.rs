//! Time in a browser: `std::time::Instant` does not exist on wasm32-unknown-unknown.

use gloo_timers::future::TimeoutFuture;

/// Milliseconds since the epoch, as the browser's clock says.
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Waits `ms` milliseconds (0 still yields to the event loop, so websocket and page messages
/// get their turn).
pub async fn sleep_ms(ms: f64) {
    TimeoutFuture::new(ms.clamp(0.0, 60_000.0) as u32).await;
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
