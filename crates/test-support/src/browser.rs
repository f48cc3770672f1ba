//! Headless Chromium for WebDriver (chromedriver), as the console's browser tests and
//! benchmark run it: Debian's `chromium` where installed, no sandbox (tests may run
//! as root), nothing fetched in the background.

use serde_json::{Map, Value, json};

/// The WebDriver capabilities of a headless Chromium session, `width` by `height`.
pub fn chromium_capabilities(width: u32, height: u32) -> Map<String, Value> {
    let mut options = json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            format!("--window-size={width},{height}"), "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-breakpad", "--disable-component-update",
            "--disable-sync",
        ],
    });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut capabilities = Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert("goog:chromeOptions".into(), options);
    capabilities
}
