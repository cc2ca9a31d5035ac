//! A real headless Chromium, driven through Debian's chromedriver with
//! the W3C WebDriver protocol (the `fantoccini` client), for the tests of
//! the admin page. Elements are found by their `data-testid`.
//!
//! Each `Browser` has its own chromedriver on a free port and its own
//! fresh profile; the session, chromedriver and the Chromium it started are
//! ended when the `Browser` is dropped, even when the test fails. A browser
//! that cannot start fails the test with the reason: it never skips.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long `click`, `type_into`, `select` and the like wait for their
/// element to be there, shown and enabled.
const ELEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Chromium's arguments. Without the background-networking ones it tries
/// to reach Google's services, and the network is closed in the tests.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

pub struct Browser {
    client: Option<Client>,
    session_id: Option<String>,
    driver: Child,
    port: u16,
    /// The profile (`profile/`) and chromedriver's log (`chromedriver.log`).
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and opens a session with a fresh headless
    /// Chromium. Panics, saying why, when either cannot start.
    pub async fn start() -> Self {
        for (what, path) in [("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)] {
            assert!(
                Path::new(path).is_file(),
                "{what} is missing at {path}: install it (apt-get install chromium chromium-driver)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("passerelle-browser-")
            .tempdir()
            .expect("creating the browser's temporary folder");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).unwrap();

        // A port found free can be taken before chromedriver binds it: try
        // a few.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let (driver, failure) = start_driver(port, dir.path()).await;
            if let Some(failure) = failure {
                failures.push(failure);
                continue;
            }
            let mut browser = Self {
                client: None,
                session_id: None,
                driver,
                port,
                dir,
            };
            browser.open_session(&profile).await;
            return browser;
        }
        panic!("chromedriver did not start:\n{}", failures.join("\n"));
    }

    async fn open_session(&mut self, profile: &Path) {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&self.driver_url()),
        )
        .await
        .unwrap_or_else(|_| panic!("Chromium did not start within 60 s\n{}", self.driver_log()))
        .unwrap_or_else(|e| panic!("Chromium did not start: {e}\n{}", self.driver_log()));
        self.session_id = client.session_id().await.ok().flatten();
        self.client = Some(client);
    }

    fn driver_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        format!("--- chromedriver log ---\n{log}")
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the browser is closed")
    }

    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Waits until the element with this `data-testid` is shown, and
    /// returns its text.
    pub async fn wait_for(&self, testid: &str, timeout: Duration) -> String {
        self.wait_until(testid, timeout, |_| true).await
    }

    /// Waits until the element with this `data-testid` is shown and its text
    /// satisfies `accept`, and returns that text. On timeout, panics with
    /// the last text seen, the page's text and a screenshot's path.
    pub async fn wait_until(&self, testid: &str, timeout: Duration, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("never found");
        loop {
            match self.shown_text(testid).await {
                Ok(Some(text)) if accept(&text) => return text,
                Ok(Some(text)) => last = format!("text {text:?}"),
                Ok(None) => last = "present but hidden".into(),
                Err(e) if is_transient(&e) => {}
                Err(e) => last = format!("error: {e}"),
            }
            if Instant::now() >= deadline {
                let context = self.failure_context().await;
                panic!("timed out after {timeout:?} waiting for [data-testid={testid:?}] ({last})\n{context}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of a shown element, None if it is hidden.
    async fn shown_text(&self, testid: &str) -> Result<Option<String>, CmdError> {
        let element = self.client().find(by_testid(testid).as_locator()).await?;
        if !element.is_displayed().await? {
            return Ok(None);
        }
        Ok(Some(element.text().await?))
    }

    /// Whether an element with this `data-testid` is in the page (shown or not).
    pub async fn is_present(&self, testid: &str) -> bool {
        match self.client().find(by_testid(testid).as_locator()).await {
            Ok(_) => true,
            Err(e) if is_no_such_element(&e) => false,
            Err(e) => panic!("looking for [data-testid={testid:?}]: {e}"),
        }
    }

    /// The element's text now; panics if it is absent.
    pub async fn text(&self, testid: &str) -> String {
        let element = self
            .client()
            .find(by_testid(testid).as_locator())
            .await
            .unwrap_or_else(|e| panic!("[data-testid={testid:?}]: {e}"));
        element
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of [data-testid={testid:?}]: {e}"))
    }

    /// An attribute of the element now (e.g. `data-state`); panics if the
    /// element is absent.
    pub async fn attribute(&self, testid: &str, name: &str) -> Option<String> {
        let element = self
            .client()
            .find(by_testid(testid).as_locator())
            .await
            .unwrap_or_else(|e| panic!("[data-testid={testid:?}]: {e}"));
        element
            .attr(name)
            .await
            .unwrap_or_else(|e| panic!("{name} of [data-testid={testid:?}]: {e}"))
    }

    /// Clicks the element once it is shown and enabled.
    pub async fn click(&self, testid: &str) {
        let element = self.usable(testid).await;
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking [data-testid={testid:?}]: {e}"));
    }

    /// Replaces the text of a field (clears it, then types).
    pub async fn type_into(&self, testid: &str, text: &str) {
        let element = self.usable(testid).await;
        element
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clearing [data-testid={testid:?}]: {e}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into [data-testid={testid:?}]: {e}"));
    }

    /// Chooses a file in a file input (the path is made absolute).
    pub async fn upload_file(&self, testid: &str, path: &Path) {
        let path = std::fs::canonicalize(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let element = self.usable(testid).await;
        element
            .send_keys(&path.to_string_lossy())
            .await
            .unwrap_or_else(|e| panic!("choosing {} in [data-testid={testid:?}]: {e}", path.display()));
    }

    /// Chooses the option with this value in a select.
    pub async fn select(&self, testid: &str, value: &str) {
        let deadline = Instant::now() + ELEMENT_TIMEOUT;
        let select = self.usable(testid).await;
        // The options may arrive after the select (filled from the API).
        let option = loop {
            match select.find(by_value(value).as_locator()).await {
                Ok(option) => break option,
                Err(e) if is_transient(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let context = self.failure_context().await;
                    panic!("no option {value:?} in [data-testid={testid:?}]: {e}\n{context}");
                }
            }
        };
        option
            .click()
            .await
            .unwrap_or_else(|e| panic!("choosing {value:?} in [data-testid={testid:?}]: {e}"));
    }

    /// Runs JavaScript in the page and returns its result.
    pub async fn execute(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client()
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    /// Saves a PNG of the window.
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session (Chromium quits); chromedriver stops on drop.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client
                .close()
                .await
                .unwrap_or_else(|e| panic!("closing the browser: {e}"));
            self.session_id = None;
        }
    }

    /// Waits for an element that can be acted on: present, shown, enabled.
    async fn usable(&self, testid: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + ELEMENT_TIMEOUT;
        let mut last = String::from("never found");
        loop {
            match self.client().find(by_testid(testid).as_locator()).await {
                Ok(element) => match (element.is_displayed().await, element.is_enabled().await) {
                    (Ok(true), Ok(true)) => return element,
                    (Ok(false), _) => last = "present but hidden".into(),
                    (_, Ok(false)) => last = "disabled".into(),
                    (Err(e), _) | (_, Err(e)) if !is_transient(&e) => last = format!("error: {e}"),
                    _ => {}
                },
                Err(e) if is_transient(&e) => {}
                Err(e) => last = format!("error: {e}"),
            }
            if Instant::now() >= deadline {
                let context = self.failure_context().await;
                panic!("[data-testid={testid:?}] was not usable within {ELEMENT_TIMEOUT:?} ({last})\n{context}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What a failure message shows: the page's URL and text, and where a
    /// screenshot was saved.
    async fn failure_context(&self) -> String {
        let client = self.client();
        let url = client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        let text = client
            .execute("return document.body ? document.body.innerText : ''", vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let text: String = text.chars().take(3000).collect();
        let shot = std::env::temp_dir().join(format!("passerelle-browser-{:08x}.png", rand::random::<u32>()));
        let saved = match client.screenshot().await {
            Ok(png) if std::fs::write(&shot, &png).is_ok() => format!("screenshot: {}", shot.display()),
            _ => "no screenshot".into(),
        };
        format!("page {url} ({saved}):\n{text}")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The test may be unwinding, its runtime going away: end the session
        // with a plain blocking request so Chromium quits, then stop
        // chromedriver and whatever is left of its process group.
        if let Some(session) = self.session_id.take() {
            delete_session(self.port, &session);
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts chromedriver (in a process group of its own, so Drop can end
/// the browsers it started too) and waits until it is ready. Returns the
/// child and, if it did not become ready, why.
async fn start_driver(port: u16, dir: &Path) -> (Child, Option<String>) {
    use std::os::unix::process::CommandExt as _;
    let log_path = dir.join("chromedriver.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
    let status_url = format!("http://127.0.0.1:{port}/status");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let failure = loop {
        if let Some(status) = driver.try_wait().unwrap() {
            break format!("chromedriver exited ({status}) on port {port}: {}", read_log(&log_path));
        }
        if let Ok(response) = http.get(&status_url).send().await
            && let Ok(body) = response.json::<serde_json::Value>().await
            && body["value"]["ready"] == true
        {
            return (driver, None);
        }
        if Instant::now() >= deadline {
            let _ = driver.kill();
            let _ = driver.wait();
            break format!(
                "chromedriver was not ready within 20 s on port {port}: {}",
                read_log(&log_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (driver, Some(failure))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

/// `DELETE /session/{id}`, blocking, bounded: for Drop.
fn delete_session(port: u16, session: &str) {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
}

/// A CSS selector, owned, so helpers can build it and lend it as a Locator.
struct Css(String);

impl Css {
    fn as_locator(&self) -> Locator<'_> {
        Locator::Css(&self.0)
    }
}

fn by_testid(testid: &str) -> Css {
    Css(format!("[data-testid=\"{}\"]", css_string(testid)))
}

fn by_value(value: &str) -> Css {
    Css(format!("option[value=\"{}\"]", css_string(value)))
}

/// Escapes text for a double-quoted CSS string.
fn css_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\a "),
            c => out.push(c),
        }
    }
    out
}

fn is_no_such_element(error: &CmdError) -> bool {
    error.is_no_such_element()
}

/// Errors that a retry may cure: the element is not there yet, or was
/// replaced by a re-render between finding it and using it.
fn is_transient(error: &CmdError) -> bool {
    error.is_no_such_element() || error.is_stale_element_reference()
}

/// A file in a fresh temporary folder, for `upload_file`.
pub struct TempFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        Self { _dir: dir, path }
    }
}
