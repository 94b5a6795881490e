//! The headless-Chromium driver's own drill (tests/harness/chromium.rs), against tiny
//! servers in the test: one page driven like a user would (type, click, wait for the DOM,
//! a phone's screen, a screenshot, cookies, console errors), and HTTPS under a cluster CA
//! the browser accepts by its key, while a stranger CA's server stays refused.
//!
//! Chromium must be installed (`.ci/run` installs it): without it these tests fail; they do
//! not skip.

mod harness;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_cluster::pki::CertificateAuthority;
use harness::chromium::{self, Browser, LaunchOptions};

const PAGE: &str = r#"<!doctype html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>driver drill</title>
<style>body { font-family: sans-serif; } #greeting { color: darkgreen; }</style>
</head>
<body>
<form id="login">
  <input id="name" name="name" autocomplete="off">
  <button id="go" type="submit">Go</button>
</form>
<p id="greeting"></p>
<p id="timer">waiting</p>
<script>
  let inputs = 0;
  document.getElementById('name').addEventListener('input', () => { inputs += 1; });
  document.getElementById('login').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = document.getElementById('name').value;
    document.getElementById('greeting').textContent = 'hello ' + name + ' (' + inputs + ' input)';
  });
  setTimeout(() => { document.getElementById('timer').textContent = 'ticked'; }, 500);
  console.error('deliberate console error', 42);
  setTimeout(() => { throw new Error('deliberate uncaught error'); }, 0);
</script>
</body>
</html>
"#;

/// Serves `PAGE` at `/` (with `cookie` set), an empty 404 at `/empty` and a 404 with a
/// body elsewhere, on 127.0.0.1, over TLS when
/// `tls` is given; a thread per connection, one request each. The threads live as long as
/// the test process.
fn serve(cookie: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the test server's port");
    let address = listener.local_addr().expect("the test server's address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let tls = tls.clone();
            std::thread::spawn(move || {
                // Chromium opens spare connections it may never use: do not wait forever.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                match tls {
                    None => answer(stream, cookie),
                    Some(config) => {
                        let Ok(connection) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        answer(rustls::StreamOwned::new(connection, stream), cookie);
                    }
                }
            });
        }
    });
    address
}

fn answer(mut stream: impl Read + Write, cookie: &str) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(count) => request.extend_from_slice(&buffer[..count]),
        }
        if request.len() > 64 * 1024 {
            return;
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let response = if path == "/" {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Set-Cookie: {cookie}\r\nConnection: close\r\n\r\n{PAGE}",
            PAGE.len()
        )
    } else if path == "/empty" {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\
         Connection: close\r\n\r\nnot found\n"
            .to_string()
    };
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

#[test]
fn drives_a_page_like_a_user() {
    let site = serve("theme=dark; Path=/; HttpOnly; SameSite=Strict", None);
    let browser = Browser::launch().expect("launching Chromium");
    let url = format!("http://{site}/");

    let status = browser.navigate(&url).expect("loading the page");
    assert_eq!(status, Some(200));
    assert_eq!(
        browser
            .evaluate("document.title")
            .expect("reading the title"),
        "driver drill"
    );
    assert_eq!(
        browser
            .evaluate("document.visibilityState")
            .expect("reading the visibility"),
        "visible",
        "the page must be in the foreground, or its timers are throttled"
    );
    assert_eq!(
        browser.navigate(&format!("http://{site}/missing")),
        Ok(Some(404)),
        "an HTTP error status is a loaded page, with its status"
    );
    let error = browser
        .navigate(&format!("http://{site}/empty"))
        .expect_err("Chromium replaces an empty error page with its own");
    assert!(
        error.contains("ERR_HTTP_RESPONSE_CODE_FAILURE") && error.contains("HTTP 404"),
        "{error}"
    );
    browser.navigate(&url).expect("loading the page again");

    // Evaluation: values, promises, exceptions.
    assert_eq!(browser.evaluate("6 * 7").expect("arithmetic"), 42);
    assert_eq!(
        browser
            .evaluate("new Promise(resolve => setTimeout(() => resolve({ done: true }), 20))")
            .expect("a promise"),
        serde_json::json!({ "done": true })
    );
    assert_eq!(browser.evaluate("undefined"), Ok(serde_json::Value::Null));
    let error = browser
        .evaluate("noSuchFunction()")
        .expect_err("a ReferenceError must be an error");
    assert!(error.contains("ReferenceError"), "{error}");
    let error = browser
        .evaluate("Promise.reject(new Error('refused'))")
        .expect_err("a rejected promise must be an error");
    assert!(error.contains("refused"), "{error}");

    // A user: type, click, and the DOM changes.
    browser.fill("#name", "bramble").expect("typing the name");
    browser.click("#go").expect("clicking Go");
    browser
        .wait_for(
            "document.getElementById('greeting').textContent === 'hello bramble (1 input)'",
            Duration::from_secs(10),
        )
        .expect("the greeting after the click");
    assert!(
        browser.fill("#absent", "x").is_err(),
        "filling nothing must fail"
    );

    // The page's own timer.
    let took = browser
        .wait_for(
            "document.getElementById('timer').textContent === 'ticked'",
            Duration::from_secs(10),
        )
        .expect("the timer's change");
    eprintln!("the 500 ms timer was seen {took:?} after the click");
    let error = browser
        .wait_for("false", Duration::from_millis(300))
        .expect_err("a condition that never holds must time out");
    assert!(error.contains("still not true"), "{error}");

    // A phone's screen: the page's viewport meta applies.
    browser
        .set_viewport(390, 844, true)
        .expect("emulating a phone");
    let size = browser
        .evaluate("[window.innerWidth, window.innerHeight, navigator.maxTouchPoints]")
        .expect("reading the viewport");
    assert_eq!(size, serde_json::json!([390, 844, 5]));
    let screenshot = chromium::artefact_dir("chromium_driver").join("phone.png");
    browser.screenshot(&screenshot).expect("the screenshot");
    let png = std::fs::read(&screenshot).expect("reading the screenshot back");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        screenshot.display()
    );
    assert!(png.len() > 1000, "a suspiciously small screenshot");
    eprintln!("screenshot: {}", screenshot.display());

    // Cookies, with their flags.
    let cookies = browser.cookies().expect("the cookies");
    let theme = cookies
        .iter()
        .find(|cookie| cookie.name == "theme")
        .unwrap_or_else(|| panic!("no theme cookie in {cookies:?}"));
    assert_eq!(theme.value, "dark");
    assert!(
        theme.http_only && !theme.secure && theme.session,
        "{theme:?}"
    );
    assert_eq!(theme.same_site.as_deref(), Some("Strict"));

    // Console errors and uncaught exceptions, from both loads of the page.
    let errors = browser.console_errors();
    assert!(
        errors
            .iter()
            .any(|error| error.contains("deliberate console error 42")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("uncaught:") && error.contains("deliberate uncaught")),
        "{errors:#?}"
    );
}

#[test]
fn trusts_the_cluster_ca_by_its_key_and_nothing_else() {
    let https = |ca: &CertificateAuthority| {
        // As an agent's HTTPS server does (bramble-api's server_tls): a certificate for
        // the node's addresses, presented with the CA after it, client certificates asked
        // for but optional.
        let issued = ca
            .issue_web_server("node-1", &[Ipv4Addr::LOCALHOST.into()])
            .expect("issuing the web certificate");
        let credential = bramble_net::Credential::from_pem(
            &ca.certificate_pem,
            &issued.certificate_pem,
            &issued.key_pem,
        )
        .expect("the web credential");
        let mut config =
            Arc::unwrap_or_clone(credential.server_config().expect("the TLS configuration"));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        serve(
            "session=s3cret; Path=/; Secure; HttpOnly; SameSite=Strict",
            Some(Arc::new(config)),
        )
    };
    let cluster = CertificateAuthority::create("chromium-driver").expect("the cluster CA");
    let stranger = CertificateAuthority::create("stranger").expect("another CA");
    let ours = https(&cluster);
    let theirs = https(&stranger);

    let options = LaunchOptions::default()
        .trust_certificates(&cluster.certificate_pem)
        .expect("the CA's key hash");
    let browser = Browser::launch_with(options).expect("launching Chromium");

    assert_eq!(browser.navigate(&format!("https://{ours}/")), Ok(Some(200)));
    assert_eq!(
        browser
            .evaluate("location.protocol + ' ' + document.title")
            .expect("reading the page"),
        "https: driver drill"
    );
    let cookies = browser.cookies().expect("the cookies");
    let session = cookies
        .iter()
        .find(|cookie| cookie.name == "session")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert!(session.secure && session.http_only, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Strict"));

    let error = browser
        .navigate(&format!("https://{theirs}/"))
        .expect_err("a server under another CA must be refused");
    assert!(error.contains("ERR_CERT_AUTHORITY_INVALID"), "{error}");
}

#[test]
fn a_dead_or_missing_browser_is_an_error_not_a_hang() {
    let options = LaunchOptions {
        binary: "no-such-chromium".into(),
        ..LaunchOptions::default()
    };
    let error = Browser::launch_with(options)
        .err()
        .expect("a missing browser must be an error");
    assert!(error.contains("apt-get install chromium"), "{error}");

    let browser = Browser::launch().expect("launching Chromium");
    let pid = libc::pid_t::try_from(browser.process_id()).expect("a pid");
    // SAFETY: a plain system call on the browser this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let start = Instant::now();
    let error = browser
        .evaluate("1")
        .expect_err("a killed browser must be an error");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the error took {:?}, the command timeout rather than the pipe's end",
        start.elapsed()
    );
    assert!(error.contains("Chromium"), "{error}");
    eprintln!("after the kill: {error}");
}

#[test]
fn decodes_base64_pem_and_der() {
    for (bytes, text) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
        (b"\xff\xfe\x00", "//4A"),
    ] {
        assert_eq!(chromium::base64_encode(bytes), text);
        assert_eq!(chromium::base64_decode(text).as_deref(), Ok(bytes));
    }
    assert_eq!(
        chromium::base64_decode("Zm9v\r\nYmE=").as_deref(),
        Ok(&b"fooba"[..])
    );
    for bad in ["Zm9v!", "Z", "Zm=9", "Zg==="] {
        assert!(chromium::base64_decode(bad).is_err(), "{bad}");
    }

    let ca = CertificateAuthority::create("der").expect("a CA");
    let issued = ca
        .issue_web_server("node-1", &[Ipv4Addr::LOCALHOST.into()])
        .expect("a web certificate");
    let both = format!("{}{}", issued.certificate_pem, ca.certificate_pem);
    let keys = chromium::spki_sha256_base64(&both).expect("the keys' hashes");
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
    for key in &keys {
        assert_eq!(chromium::base64_decode(key).map(|hash| hash.len()), Ok(32));
    }
    // The CA's key info is an EC public key (rcgen's default, P-256): SEQUENCE {
    // SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING of 66 bytes }.
    let der = chromium::pem_certificates(&ca.certificate_pem).expect("the CA's DER");
    let key = chromium::subject_public_key_info(&der[0]).expect("the CA's key info");
    assert_eq!(key.len(), 91);
    assert!(key.starts_with(&[0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce]));
    assert!(chromium::pem_certificates("no PEM here").is_err());
    assert!(chromium::subject_public_key_info(&der[0][..40]).is_err());
}
