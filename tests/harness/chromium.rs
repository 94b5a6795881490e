//! A small Chrome DevTools Protocol (CDP) driver for the drills that need a real browser,
//! such as the web dashboard's: it starts a headless Chromium, opens one page, and lets a
//! test navigate, run JavaScript, wait for the page to reach a state, emulate a phone's
//! screen, read cookies, collect console errors and take screenshots. Blocking, std only
//! (plus serde_json, libc and tempfile, which the tests already have, and bramble-net's
//! SHA-256; base64 and the little DER it needs are here); every wait has a timeout, so a
//! hung browser fails the test instead of hanging it, and dropping the [`Browser`] kills
//! the browser.
//!
//! # Why a pipe and not a WebSocket
//!
//! Chromium offers CDP either on a TCP port (`--remote-debugging-port`, HTTP discovery then
//! a WebSocket) or on two inherited descriptors (`--remote-debugging-pipe`): it reads
//! commands from fd 3 and writes answers and events to fd 4, each message a JSON text
//! ended by a NUL byte. The pipe needs no WebSocket client (framing, masking, handshake),
//! no port (none to pick, none to race for with the agents' ports, none that another
//! process on the machine could connect to), and it closes by itself when Chromium exits,
//! which turns a crashed browser into an immediate error rather than a timeout.
//!
//! # HTTPS and the cluster's CA
//!
//! An agent's web server presents a certificate issued by the cluster's own CA, which
//! Chromium does not trust. Making it trust the CA properly would mean a private NSS
//! database (`$HOME/.pki/nssdb`, filled with `certutil` from another package) for every
//! browser. Instead [`LaunchOptions::trust_certificates`] passes
//! `--ignore-certificate-errors-spki-list` with the base64 SHA-256 of the CA's
//! SubjectPublicKeyInfo: Chromium then accepts a server whose *presented* chain contains a
//! certificate with that key, and nothing else (a server under another CA still fails with
//! `net::ERR_CERT_AUTHORITY_INVALID`, as the self-test checks). It works for Bramble
//! because an agent presents its certificate followed by the CA's (`Credential::chain`); a
//! server sending its leaf alone would need the leaf's key in the list. What it does not
//! check, unlike real trust, is the host name: a name mismatch is forgiven too (Chromium
//! resets the whole verification when a key matches). Chromium only honours the flag
//! together with `--user-data-dir`, which [`Browser::launch_with`] always passes.
//! [`LaunchOptions::ignore_certificate_errors`] (`--ignore-certificate-errors`, which
//! accepts any certificate at all) remains for a test that has no PEM at hand.
//!
//! The page runs in the foreground with timer throttling off, so a page script that ticks
//! every second ticks every second.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The largest single CDP message accepted from Chromium; screenshots are the big ones.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How many recent events are kept for waiters (older ones are dropped).
const EVENTS_KEPT: usize = 4096;

/// How many console errors are kept (the first ones: later ones are usually consequences).
const CONSOLE_ERRORS_KEPT: usize = 1000;

/// How often [`Browser::wait_for`] evaluates its condition.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// `target/test-artefacts/<test_name>/`, created if missing: where a drill leaves files
/// (screenshots) for a person to look at after the run.
pub fn artefact_dir(test_name: &str) -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp` for integration tests, wherever the target
    // directory is (CARGO_TARGET_DIR included).
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let target = tmp.parent().unwrap_or(tmp);
    let dir = target.join("test-artefacts").join(test_name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|error| panic!("creating {}: {error}", dir.display()));
    dir
}

/// How to start the browser.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The Chromium executable (`chromium`, found on PATH, by default).
    pub binary: PathBuf,
    /// Arguments added after the driver's own (see the `trust_…`/`ignore_…` helpers).
    pub extra_args: Vec<String>,
    /// How long one command may take (launch, navigation's load event, one evaluation,
    /// a screenshot) before it is an error.
    pub timeout: Duration,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            binary: PathBuf::from("chromium"),
            extra_args: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl LaunchOptions {
    /// Accepts HTTPS servers whose presented chain contains one of the certificates in
    /// `pem` (the cluster CA's, typically): see the module documentation.
    pub fn trust_certificates(mut self, pem: &str) -> Result<Self, String> {
        let keys = spki_sha256_base64(pem)?;
        self.extra_args.push(format!(
            "--ignore-certificate-errors-spki-list={}",
            keys.join(",")
        ));
        Ok(self)
    }

    /// Accepts any certificate at all.
    pub fn ignore_certificate_errors(mut self) -> Self {
        self.extra_args
            .push("--ignore-certificate-errors".to_string());
        self
    }
}

/// A cookie as Chromium stores it (`Network.getCookies`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax` or `None` as sent; absent when the server set no SameSite.
    pub same_site: Option<String>,
    /// A session cookie (no Expires/Max-Age): gone when the browser closes.
    pub session: bool,
    /// Seconds since the epoch; meaningless for a session cookie.
    pub expires: f64,
}

/// A headless Chromium with one page attached, killed on drop.
pub struct Browser {
    child: Child,
    connection: Arc<Connection>,
    commands: Mutex<File>,
    next_id: AtomicU64,
    session: String,
    timeout: Duration,
    log: PathBuf,
    // Dropped after `drop` has killed the browser, which writes into it.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A browser with the default [`LaunchOptions`].
    pub fn launch() -> Result<Browser, String> {
        Browser::launch_with(LaunchOptions::default())
    }

    /// Starts Chromium, creates a page and attaches to it (flattened session).
    pub fn launch_with(options: LaunchOptions) -> Result<Browser, String> {
        let profile = tempfile::Builder::new()
            .prefix("bramble-chromium-")
            .tempdir()
            .map_err(|error| format!("creating the browser's profile directory: {error}"))?;
        // Chromium's HOME too: Debian's build keeps crash reports in ~/.config/chromium
        // whatever the user-data-dir, and a developer's own certificate store
        // (~/.pki/nssdb) must not change what a test sees.
        let home = profile.path().join("home");
        let data = profile.path().join("data");
        for dir in [&home, &data] {
            std::fs::create_dir_all(dir)
                .map_err(|error| format!("creating {}: {error}", dir.display()))?;
        }
        let log = profile.path().join("chromium.log");
        let stderr =
            File::create(&log).map_err(|error| format!("creating {}: {error}", log.display()))?;

        // Chromium reads fd 3 and writes fd 4. The child's ends are moved to 10 and up
        // first, so that dup2 onto 3 and 4 never finds its source already there (dup2 of a
        // descriptor onto itself would keep its close-on-exec flag) nor overwrites the
        // other one.
        let (child_reads, commands) = pipe().map_err(|error| format!("pipe: {error}"))?;
        let (events, child_writes) = pipe().map_err(|error| format!("pipe: {error}"))?;
        let child_reads =
            above(child_reads, 10).map_err(|error| format!("fcntl(F_DUPFD): {error}"))?;
        let child_writes =
            above(child_writes, 10).map_err(|error| format!("fcntl(F_DUPFD): {error}"))?;
        let (reads_fd, writes_fd) = (child_reads.as_raw_fd(), child_writes.as_raw_fd());

        let mut command = Command::new(&options.binary);
        command
            .args([
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                // /dev/shm is 64 MiB in a default container: Chromium crashes when it fills.
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--mute-audio",
                "--password-store=basic",
                // A dashboard that updates every second must not be slowed down for being
                // in a window nobody looks at.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
            ])
            .arg(format!("--user-data-dir={}", data.display()))
            .args(&options.extra_args)
            .arg("about:blank")
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own group, so that drop can kill its helpers (zygote, renderers) too.
            .process_group(0);
        // SAFETY: between fork and exec the hook only makes async-signal-safe system calls
        // (dup2, prctl) on descriptors the parent keeps open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(reads_fd, 3) < 0 || libc::dup2(writes_fd, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // If the test process dies without dropping the Browser (killed after a
                // timeout), the browser dies with it. Linux sends the signal when the
                // *thread* that spawned it exits: launch on the thread that uses it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "Chromium is not installed ({} not found on PATH): `apt-get install chromium` \
                     (.ci/run installs it)",
                    options.binary.display()
                )
            } else {
                format!("starting {}: {error}", options.binary.display())
            }
        })?;
        // Only the child keeps its ends: when it exits, our read end sees end of file.
        drop((child_reads, child_writes));

        let connection = Arc::new(Connection::default());
        // From here on, an error drops the Browser, which kills the child.
        let mut browser = Browser {
            child,
            connection: connection.clone(),
            commands: Mutex::new(File::from(commands)),
            next_id: AtomicU64::new(1),
            session: String::new(),
            timeout: options.timeout,
            log,
            _profile: profile,
        };
        let reader = File::from(events);
        std::thread::Builder::new()
            .name("cdp-reader".to_string())
            .spawn(move || read_messages(reader, &connection))
            .map_err(|error| format!("starting the CDP reader thread: {error}"))?;
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = string_field(&target, "targetId", "Target.createTarget")?;
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        browser.session = string_field(&attached, "sessionId", "Target.attachToTarget")?;
        for method in ["Page.enable", "Runtime.enable", "Network.enable"] {
            browser.page(method, json!({}))?;
        }
        browser.page("Page.bringToFront", json!({}))?;
        Ok(browser)
    }

    /// Loads `url` in the page and waits for its load event. Returns the HTTP status of the
    /// document (None for a URL that has none, such as `about:blank`, or for a same-document
    /// navigation). A network or certificate error is an error; an HTTP error status is not,
    /// unless its body is empty: Chromium then shows its own error page and reports
    /// `net::ERR_HTTP_RESPONSE_CODE_FAILURE` (the error names the status).
    pub fn navigate(&self, url: &str) -> Result<Option<u16>, String> {
        let mark = self.connection.mark();
        let result = self.page("Page.navigate", json!({ "url": url }))?;
        let loader = result.get("loaderId").and_then(Value::as_str);
        if let Some(error) = result.get("errorText").and_then(Value::as_str)
            && !error.is_empty()
        {
            // An HTTP error status with an empty body is one (Chromium shows its own page).
            let status = loader
                .and_then(|loader| self.document_status(mark, loader))
                .map(|status| format!(" (HTTP {status})"))
                .unwrap_or_default();
            return Err(format!("navigating to {url}: {error}{status}"));
        }
        // A same-document navigation (only the fragment changes) has no loader and no load.
        let Some(loader) = loader else {
            return Ok(None);
        };
        self.wait_event(mark, self.timeout, "Page.loadEventFired", |_| true)
            .map_err(|error| format!("navigating to {url}: {error}"))?;
        Ok(self.document_status(mark, loader))
    }

    /// The HTTP status of the document `loader` loaded, from the events after `mark`.
    fn document_status(&self, mark: u64, loader: &str) -> Option<u16> {
        let response = self.connection.find_event(mark, |event| {
            event["method"] == "Network.responseReceived"
                && event["sessionId"] == self.session.as_str()
                && event["params"]["loaderId"] == loader
                && event["params"]["type"] == "Document"
        })?;
        u16::try_from(response["params"]["response"]["status"].as_u64()?).ok()
    }

    /// Evaluates `js` (an expression) in the page, awaiting it if it is a promise, as a user
    /// gesture (so that it may, say, open a popup). The result comes back as JSON:
    /// `undefined` and values JSON cannot hold (functions, DOM nodes…) as null, NaN and
    /// infinities as strings. A thrown exception or a rejected promise is an error.
    pub fn evaluate(&self, js: &str) -> Result<Value, String> {
        self.evaluate_within(js, self.timeout)
    }

    fn evaluate_within(&self, js: &str, timeout: Duration) -> Result<Value, String> {
        let result = self.call_within(
            Some(&self.session),
            "Runtime.evaluate",
            json!({
                "expression": js,
                "returnByValue": true,
                "awaitPromise": true,
                "userGesture": true,
            }),
            timeout,
        )?;
        if let Some(details) = result.get("exceptionDetails") {
            return Err(format!("JavaScript error: {}", describe_exception(details)));
        }
        let object = &result["result"];
        if let Some(value) = object.get("value") {
            return Ok(value.clone());
        }
        if let Some(special) = object.get("unserializableValue").and_then(Value::as_str) {
            return Ok(Value::String(special.to_string()));
        }
        Ok(Value::Null)
    }

    /// Evaluates the expression `js_condition` (it may be a promise) every 50 ms until it is
    /// truthy, and returns how long that took. Evaluation errors (the page is between two
    /// documents, an element is not there yet) count as "not yet"; on timeout the error
    /// says what the last evaluation gave.
    pub fn wait_for(&self, js_condition: &str, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let expression = format!("(async () => !!(await (\n{js_condition}\n)))()");
        let last = loop {
            let left = timeout.saturating_sub(start.elapsed());
            let last = match self.evaluate_within(&expression, left.max(POLL_EVERY)) {
                Ok(Value::Bool(true)) => return Ok(start.elapsed()),
                Ok(other) => format!("it was {other}"),
                Err(error) => error,
            };
            if let Some(closed) = self.connection.closed() {
                return Err(self.with_log(&format!("waiting for `{js_condition}`: {closed}")));
            }
            if start.elapsed() >= timeout {
                break last;
            }
            std::thread::sleep(POLL_EVERY.min(timeout.saturating_sub(start.elapsed())));
        };
        Err(format!(
            "`{js_condition}` still not true after {timeout:?} (last evaluation: {last})"
        ))
    }

    /// Sets the input (or textarea) `selector` finds to `text`, as typing would: with
    /// `input` and `change` events, so the page's listeners see it.
    pub fn fill(&self, selector: &str, text: &str) -> Result<(), String> {
        let selector = js_string(selector);
        let text = js_string(text);
        self.evaluate(&format!(
            "(() => {{
                const element = document.querySelector({selector});
                if (!element) throw new Error('nothing matches ' + {selector});
                element.focus();
                element.value = {text};
                element.dispatchEvent(new Event('input', {{ bubbles: true }}));
                element.dispatchEvent(new Event('change', {{ bubbles: true }}));
            }})()"
        ))
        .map(drop)
    }

    /// Clicks the element `selector` finds (`element.click()`: a button submits its form).
    pub fn click(&self, selector: &str) -> Result<(), String> {
        let selector = js_string(selector);
        self.evaluate(&format!(
            "(() => {{
                const element = document.querySelector({selector});
                if (!element) throw new Error('nothing matches ' + {selector});
                element.click();
            }})()"
        ))
        .map(drop)
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        let result = self.page("Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = string_field(&result, "data", "Page.captureScreenshot")?;
        let png = base64_decode(&data).map_err(|error| format!("the screenshot: {error}"))?;
        std::fs::write(path, png).map_err(|error| format!("writing {}: {error}", path.display()))
    }

    /// Emulates a screen of `width` x `height` CSS pixels; `mobile` also makes the page
    /// honour `<meta name="viewport">` and turns on touch (as on a phone).
    pub fn set_viewport(&self, width: u32, height: u32, mobile: bool) -> Result<(), String> {
        self.page(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": width,
                "height": height,
                "deviceScaleFactor": 1,
                "mobile": mobile,
            }),
        )?;
        self.page(
            "Emulation.setTouchEmulationEnabled",
            json!({ "enabled": mobile, "maxTouchPoints": if mobile { 5 } else { 1 } }),
        )?;
        Ok(())
    }

    /// The cookies the browser would send to the page's current URL.
    pub fn cookies(&self) -> Result<Vec<Cookie>, String> {
        let result = self.page("Network.getCookies", json!({}))?;
        let cookies = result["cookies"]
            .as_array()
            .ok_or_else(|| format!("Network.getCookies answered {result}"))?;
        Ok(cookies
            .iter()
            .map(|cookie| {
                let text = |field: &str| cookie[field].as_str().unwrap_or_default().to_string();
                Cookie {
                    name: text("name"),
                    value: text("value"),
                    domain: text("domain"),
                    path: text("path"),
                    http_only: cookie["httpOnly"].as_bool().unwrap_or(false),
                    secure: cookie["secure"].as_bool().unwrap_or(false),
                    same_site: cookie["sameSite"].as_str().map(str::to_string),
                    session: cookie["session"].as_bool().unwrap_or(false),
                    expires: cookie["expires"].as_f64().unwrap_or(-1.0),
                }
            })
            .collect())
    }

    /// Every `console.error`/`console.assert` failure and uncaught exception (or unhandled
    /// rejection) in the page since launch, oldest first, one text each.
    pub fn console_errors(&self) -> Vec<String> {
        self.connection.lock().console_errors.clone()
    }

    /// The browser process's id (for a test that wants to kill it).
    pub fn process_id(&self) -> u32 {
        self.child.id()
    }

    /// The end of Chromium's own log (its stderr), for a failure message, without the
    /// D-Bus complaints a machine without a desktop session fills it with.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains(":dbus/"))
            .collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn with_log(&self, error: &str) -> String {
        format!("{error}\nChromium's log ends with:\n{}", self.log_tail())
    }

    /// A command to the page's session.
    fn page(&self, method: &str, params: Value) -> Result<Value, String> {
        self.call(Some(&self.session), method, params)
    }

    fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        self.call_within(session, method, params, self.timeout)
    }

    /// Sends one command and waits up to `timeout` for its answer's `result`.
    fn call_within(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session.to_string());
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        {
            let mut state = self.connection.lock();
            if let Some(closed) = &state.closed {
                return Err(self.with_log(&format!("{method}: {closed}")));
            }
            state.pending.insert(id);
        }
        // A command is far smaller than the pipe's buffer, so this write does not block
        // unless Chromium has stopped reading many commands ago.
        let written = self
            .commands
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .write_all(&bytes);
        if let Err(error) = written {
            self.connection.lock().pending.remove(&id);
            return Err(self.with_log(&format!("{method}: writing to Chromium: {error}")));
        }
        let deadline = Instant::now() + timeout;
        let mut state = self.connection.lock();
        let answer = loop {
            if let Some(answer) = state.answers.remove(&id) {
                break answer;
            }
            if let Some(closed) = &state.closed {
                let error = format!("{method}: {closed}");
                drop(state);
                return Err(self.with_log(&error));
            }
            let now = Instant::now();
            if now >= deadline {
                state.pending.remove(&id);
                return Err(format!(
                    "{method}: no answer from Chromium within {timeout:?}"
                ));
            }
            state = self
                .connection
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        };
        drop(state);
        if let Some(error) = answer.get("error") {
            return Err(format!(
                "{method}: {} ({})",
                error["message"].as_str().unwrap_or("error"),
                error
                    .get("data")
                    .and_then(Value::as_str)
                    .unwrap_or("no details")
            ));
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Waits for an event of this page named `method` that arrived after `mark` and
    /// satisfies `matches`.
    fn wait_event(
        &self,
        mark: u64,
        timeout: Duration,
        method: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.connection.lock();
        loop {
            let found = state.events_after(mark).find(|event| {
                event["method"] == method
                    && event["sessionId"] == self.session.as_str()
                    && matches(event)
            });
            if let Some(event) = found {
                return Ok(event.clone());
            }
            if let Some(closed) = &state.closed {
                let error = format!("waiting for {method}: {closed}");
                drop(state);
                return Err(self.with_log(&error));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no {method} within {timeout:?}"));
            }
            state = self
                .connection
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser and its helpers. Nothing of the profile is needed
        // after the test, so there is no point in a graceful Browser.close.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: a plain system call; the group is the one the child leads (its
            // process_group(0)), and the child is not yet reaped, so the id is still ours.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the reader thread shares with the commands.
#[derive(Default)]
struct Connection {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Commands sent and not yet answered (or given up on).
    pending: HashSet<u64>,
    answers: HashMap<u64, Value>,
    /// Recent events with their sequence numbers, oldest first.
    events: VecDeque<(u64, Value)>,
    next_event: u64,
    console_errors: Vec<String>,
    /// Why no more messages will come, once the pipe has ended.
    closed: Option<String>,
}

impl State {
    fn events_after(&self, mark: u64) -> impl Iterator<Item = &Value> {
        self.events
            .iter()
            .filter(move |(sequence, _)| *sequence >= mark)
            .map(|(_, event)| event)
    }
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The sequence number the next event will have.
    fn mark(&self) -> u64 {
        self.lock().next_event
    }

    fn find_event(&self, mark: u64, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        self.lock()
            .events_after(mark)
            .find(|event| matches(event))
            .cloned()
    }

    fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }

    fn receive(&self, message: Value) {
        let mut state = self.lock();
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            if state.pending.remove(&id) {
                state.answers.insert(id, message);
            }
        } else if message.get("method").is_some() {
            if let Some(error) = console_error(&message)
                && state.console_errors.len() < CONSOLE_ERRORS_KEPT
            {
                state.console_errors.push(error);
            }
            let sequence = state.next_event;
            state.next_event += 1;
            if state.events.len() == EVENTS_KEPT {
                state.events.pop_front();
            }
            state.events.push_back((sequence, message));
        }
        self.changed.notify_all();
    }

    fn close(&self, why: String) {
        let mut state = self.lock();
        state.closed.get_or_insert(why);
        self.changed.notify_all();
    }
}

/// The reader thread: splits fd 4's stream on NUL bytes until it ends.
fn read_messages(pipe: File, connection: &Connection) {
    let mut reader = BufReader::with_capacity(1 << 16, pipe);
    let mut message = Vec::new();
    let end = loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => break format!("reading from Chromium: {error}"),
        };
        if buffer.is_empty() {
            break "Chromium closed the DevTools pipe (did it exit or crash?)".to_string();
        }
        let (chunk, complete) = match buffer.iter().position(|&byte| byte == 0) {
            Some(end) => (&buffer[..end], true),
            None => (buffer, false),
        };
        if message.len() + chunk.len() > MAX_MESSAGE_BYTES {
            break format!("Chromium sent a message over {MAX_MESSAGE_BYTES} bytes");
        }
        message.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(complete);
        reader.consume(used);
        if complete {
            match serde_json::from_slice(&message) {
                Ok(value) => connection.receive(value),
                Err(error) => break format!("Chromium sent a message that is not JSON: {error}"),
            }
            // Do not keep a screenshot's worth of buffer for the small messages after it.
            if message.capacity() > 1 << 20 {
                message = Vec::new();
            } else {
                message.clear();
            }
        }
    };
    connection.close(end);
}

/// The text of a console error or an uncaught exception event, None for other events.
fn console_error(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.consoleAPICalled" => {
            let kind = params["type"].as_str()?;
            if kind != "error" && kind != "assert" {
                return None;
            }
            let words: Vec<String> = params["args"]
                .as_array()
                .map(|arguments| arguments.iter().map(describe_remote_object).collect())
                .unwrap_or_default();
            let place = params["stackTrace"]["callFrames"]
                .get(0)
                .map(|frame| {
                    format!(
                        " ({}:{})",
                        frame["url"].as_str().unwrap_or("?"),
                        frame["lineNumber"].as_u64().map_or(0, |line| line + 1)
                    )
                })
                .unwrap_or_default();
            Some(format!("console.{kind}: {}{place}", words.join(" ")))
        }
        "Runtime.exceptionThrown" => Some(format!(
            "uncaught: {}",
            describe_exception(&params["exceptionDetails"])
        )),
        _ => None,
    }
}

/// A console argument as the console would print it, roughly.
fn describe_remote_object(object: &Value) -> String {
    if let Some(text) = object["value"].as_str() {
        return text.to_string();
    }
    if let Some(value) = object.get("value") {
        return value.to_string();
    }
    for field in ["unserializableValue", "description", "type"] {
        if let Some(text) = object[field].as_str() {
            return text.to_string();
        }
    }
    object.to_string()
}

/// An `ExceptionDetails`' message: the exception's description (message and stack) when
/// there is one, else the details' text.
fn describe_exception(details: &Value) -> String {
    let exception = &details["exception"];
    exception["description"]
        .as_str()
        .map(str::to_string)
        .or_else(|| exception.get("value").map(describe_remote_object))
        .or_else(|| details["text"].as_str().map(str::to_string))
        .unwrap_or_else(|| details.to_string())
}

fn string_field(result: &Value, field: &str, method: &str) -> Result<String, String> {
    result[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{method} answered without {field}: {result}"))
}

/// `text` as a JavaScript string literal (a JSON string is one).
fn js_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd` moved to the lowest free descriptor at or above `minimum` (close-on-exec).
fn above(fd: OwnedFd, minimum: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own; the copy it returns is new and ours.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, minimum) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Decodes standard base64 (with or without padding; ASCII white space, as in PEM, is
/// skipped).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut padding = 0;
    for (index, character) in text.bytes().enumerate() {
        let sextet = match character {
            b'A'..=b'Z' => character - b'A',
            b'a'..=b'z' => character - b'a' + 26,
            b'0'..=b'9' => character - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return Err(format!("not base64: byte {character:#04x} at {index}")),
        };
        if padding > 0 {
            return Err(format!("base64 data after padding at {index}"));
        }
        bits = (bits << 6) | u32::from(sextet);
        count += 1;
        if count == 4 {
            bytes.extend_from_slice(&bits.to_be_bytes()[1..]);
            bits = 0;
            count = 0;
        }
    }
    match count {
        0 => {}
        2 => bytes.push((bits >> 4) as u8),
        3 => bytes.extend_from_slice(&((bits >> 2) as u16).to_be_bytes()),
        _ => return Err("truncated base64".to_string()),
    }
    if padding > 2 || (padding > 0 && (count + padding) % 4 != 0) {
        return Err("bad base64 padding".to_string());
    }
    Ok(bytes)
}

/// Encodes standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let bits = u32::from_be_bytes([0, group[0], group[1], group[2]]);
        for position in 0..4 {
            if position <= chunk.len() {
                text.push(char::from(
                    ALPHABET[(bits >> (18 - 6 * position)) as usize & 63],
                ));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// The DER certificates in PEM text (`-----BEGIN CERTIFICATE-----` blocks only).
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certificates = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let end = body
            .find(END)
            .ok_or_else(|| "a PEM certificate without its END line".to_string())?;
        certificates.push(base64_decode(&body[..end])?);
        rest = &body[end + END.len()..];
    }
    if certificates.is_empty() {
        return Err("no certificate in the PEM text".to_string());
    }
    Ok(certificates)
}

/// The base64 SHA-256 of each certificate's SubjectPublicKeyInfo in `pem`: what Chromium's
/// `--ignore-certificate-errors-spki-list` (and HTTP public key pinning) expect.
pub fn spki_sha256_base64(pem: &str) -> Result<Vec<String>, String> {
    pem_certificates(pem)?
        .iter()
        .map(|certificate| {
            let key = subject_public_key_info(certificate)?;
            // Fingerprint::of is a plain SHA-256 of the bytes it is given.
            Ok(base64_encode(&bramble_net::Fingerprint::of(key).0))
        })
        .collect()
}

/// The SubjectPublicKeyInfo (tag and length included) of a DER X.509 certificate:
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }
pub fn subject_public_key_info(certificate: &[u8]) -> Result<&[u8], String> {
    let (tag, certificate_body, _) = der_element(certificate)?;
    let (tbs_tag, mut tbs, _) = der_element(certificate_body)?;
    if tag != 0x30 || tbs_tag != 0x30 {
        return Err("not a DER certificate".to_string());
    }
    let (first, _, _) = der_element(tbs)?;
    if first == 0xa0 {
        tbs = der_element(tbs)?.2; // the explicit version
    }
    for _field in ["serialNumber", "signature", "issuer", "validity", "subject"] {
        tbs = der_element(tbs)?.2;
    }
    let (key_tag, _, after) = der_element(tbs)?;
    if key_tag != 0x30 {
        return Err("the certificate's public key is not where X.509 puts it".to_string());
    }
    Ok(&tbs[..tbs.len() - after.len()])
}

/// One DER element at the start of `bytes`: (tag, contents, what follows).
fn der_element(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let truncated = || "truncated DER".to_string();
    let tag = *bytes.first().ok_or_else(truncated)?;
    let first = *bytes.get(1).ok_or_else(truncated)?;
    let (length, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err(format!("unsupported DER length form {first:#04x}"));
        }
        let octets = bytes.get(2..2 + count).ok_or_else(truncated)?;
        let length = octets
            .iter()
            .fold(0usize, |length, &octet| (length << 8) | usize::from(octet));
        (length, 2 + count)
    };
    let end = header
        .checked_add(length)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(truncated)?;
    Ok((tag, &bytes[header..end], &bytes[end..]))
}
