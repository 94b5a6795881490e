//! Drills of the HTTP API (issue 12, second part), with `curl` as the client — what
//! docs/API.md tells users to run — against real agents from `bramble up`:
//!
//! - every node serves `/api/v1` over HTTPS with a certificate the cluster CA verifies
//!   *by address* (`--cacert`, never `--insecure`), and answers for the whole cluster;
//! - no credential, a malformed, unknown, revoked or expired token, and a node's own
//!   certificate are refused (401 or 403) with an error that says why; a token and an
//!   admin certificate are let in;
//! - the answers are the CLI's `--json` (the same RPC behind both), and actions act:
//!   scaling a service, cancelling a job;
//! - unknown endpoints, wrong methods and bad bodies get 404, 405 and 400.

mod harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{TestCluster, wait_until};
use serde_json::Value;

/// One curl exchange: the status and the body. `extra` goes before the URL.
fn curl(ca: &Path, extra: &[&str], url: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["--write-out", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("running curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl gave no status for {url}: {text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (code, body.to_string())
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

/// GET with a token; must answer 200; the JSON.
fn get(ca: &Path, token: &str, url: &str) -> Value {
    let (code, body) = curl(ca, &["-H", &bearer(token)], url);
    assert_eq!(code, 200, "GET {url}: {body}");
    json(&body)
}

#[test]
fn the_api_answers_for_the_cluster_with_tokens_and_certificates_and_refuses_the_rest() {
    let cluster = TestCluster::up(3);
    let ca = cluster.path().join("ca.pem");
    let ca_text = ca.to_str().expect("utf-8 path");
    let listing = cluster
        .bramble_ok(&["api", "--write-ca", ca_text, "--json"])
        .json();
    let urls: Vec<String> = listing
        .as_array()
        .expect("a list")
        .iter()
        .map(|row| {
            row["url"]
                .as_str()
                .unwrap_or_else(|| panic!("every node serves the API: {listing}"))
                .to_string()
        })
        .collect();
    assert_eq!(urls.len(), 3, "{listing}");
    let url = &urls[0];

    // Nothing without a credential; the reason and a Bearer challenge.
    let (code, body) = curl(&ca, &[], &format!("{url}/nodes"));
    assert_eq!(code, 401, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap_or_default()
            .contains("token"),
        "{body}"
    );
    let (code, head) = curl(&ca, &["--head"], &format!("{url}/nodes"));
    assert_eq!(code, 401);
    assert!(
        head.to_lowercase().contains("www-authenticate: bearer"),
        "{head}"
    );
    for bad in [
        "Authorization: Bearer nonsense",
        "Authorization: Basic YWRtaW46YWRtaW4=",
        "Authorization: Bearer brt_ci_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let (code, body) = curl(&ca, &["-H", bad], &format!("{url}/nodes"));
        assert_eq!(code, 401, "{bad}: {body}");
    }

    // A token, shown once, works on every node, each verified by address with the CA.
    let created = cluster
        .bramble_ok(&["token", "create", "ci", "--json"])
        .json();
    let token = created["token"].as_str().expect("a token").to_string();
    assert!(token.starts_with("brt_ci_"), "{created}");
    let listed = cluster.bramble_ok(&["token", "ls", "--json"]).stdout;
    assert!(listed.contains("\"ci\""), "{listed}");
    assert!(
        !listed.contains(&token[7..]),
        "token ls never shows a secret"
    );
    let again = cluster.bramble(&["token", "create", "ci"]);
    assert!(
        !again.success && again.stderr.contains("exists"),
        "{}",
        again.stderr
    );
    for node_url in &urls {
        let nodes = get(&ca, &token, &format!("{node_url}/nodes"));
        let alive = nodes
            .as_array()
            .expect("a node list")
            .iter()
            .filter(|node| node["state"] == "alive")
            .count();
        assert_eq!(alive, 3, "{nodes}");
    }
    let whoami = get(&ca, &token, &format!("{url}/whoami"));
    assert_eq!(whoami["principal"], "admin/token:ci", "{whoami}");

    // The answers are the CLI's, field for field.
    let status = get(&ca, &token, &format!("{url}/cluster"));
    let cli_status = cluster.bramble_ok(&["cluster", "status", "--json"]).json();
    assert_eq!(
        status["leader"], cli_status["leader"],
        "{status}\n{cli_status}"
    );
    assert!(status["leader"].is_string(), "{status}");
    let index = get(&ca, &token, url);
    assert!(
        index.as_array().is_some_and(|list| list.len() > 10),
        "{index}"
    );
    let sample = get(&ca, &token, &format!("{url}/nodes/n2/sample"));
    assert_eq!(sample["node"], "n2", "{sample}");
    let history = get(&ca, &token, &format!("{url}/nodes/n3/history?tier=hour"));
    assert_eq!(history["node"], "n3");
    assert!(
        history["series"]
            .as_array()
            .is_some_and(|series| !series.is_empty())
    );
    let workers = get(&ca, &token, &format!("{url}/nodes/n1/workers"));
    assert!(
        workers["workers"]
            .as_array()
            .is_some_and(|list| !list.is_empty()),
        "{workers}"
    );

    // Actions: scale a service; cancel a job.
    cluster.bramble_ok(&["service", "create", "sleeper", "--", "sleep", "600"]);
    let (code, body) = curl(
        &ca,
        &[
            "-H",
            &bearer(&token),
            "-X",
            "POST",
            "--data",
            "{\"replicas\": 2}",
        ],
        &format!("{}/services/sleeper/scale", urls[1]),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["replicas"], 2, "{body}");
    let services = get(&ca, &token, &format!("{url}/services"));
    let cli_services = cluster.bramble_ok(&["service", "ls", "--json"]).json();
    assert_eq!(services[0]["name"], "sleeper", "{services}");
    assert_eq!(services[0]["replicas"], cli_services[0]["replicas"]);
    assert_eq!(services[0]["replicas"], 2);
    let ps = get(&ca, &token, &format!("{url}/services/sleeper"));
    assert_eq!(ps["spec"]["name"], "sleeper", "{ps}");

    let submitted = cluster
        .bramble_ok(&["run", "--detach", "--json", "-n", "2", "--", "sleep", "600"])
        .json();
    let id = submitted["id"].as_u64().expect("a job id");
    let jobs = get(&ca, &token, &format!("{url}/jobs"));
    assert!(
        jobs.as_array()
            .is_some_and(|list| list.iter().any(|job| job["id"] == id)),
        "{jobs}"
    );
    let (code, body) = curl(
        &ca,
        &["-H", &bearer(&token), "-X", "POST"],
        &format!("{}/jobs/{id}/cancel", urls[2]),
    );
    assert_eq!(code, 200, "{body}");
    wait_until("the job is cancelled", Duration::from_secs(30), || {
        let view = get(&ca, &token, &format!("{url}/jobs/{id}"));
        view["record"]["state"] == "cancelled"
    });

    // A balancer's backend, drained and weighted at run time.
    cluster.bramble_ok(&[
        "lb",
        "create",
        "site",
        "--listen",
        "127.0.0.1:1",
        "--backend",
        "web1=127.0.0.1:2",
        "--backend",
        "web2=127.0.0.1:3",
    ]);
    let (code, body) = curl(
        &ca,
        &["-H", &bearer(&token), "-X", "POST"],
        &format!("{url}/balancers/site/backends/web1/drain"),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(
        &ca,
        &[
            "-H",
            &bearer(&token),
            "-X",
            "POST",
            "--data",
            "{\"weight\": 7}",
        ],
        &format!("{url}/balancers/site/backends/web2/weight"),
    );
    assert_eq!(code, 200, "{body}");
    let shown = cluster.bramble_ok(&["lb", "show", "site", "--json"]).stdout;
    assert!(shown.contains("\"drain\""), "{shown}");
    assert!(shown.contains("\"weight\": 7"), "{shown}");
    let (code, body) = curl(
        &ca,
        &["-H", &bearer(&token), "-X", "POST"],
        &format!("{url}/balancers/site/backends/nobody/drain"),
    );
    assert_eq!(code, 400, "{body}");

    // Wrong endpoints, methods and bodies.
    let (code, body) = curl(&ca, &["-H", &bearer(&token)], &format!("{url}/nothing"));
    assert_eq!(code, 404, "{body}");
    let (code, body) = curl(
        &ca,
        &["-H", &bearer(&token), "-X", "DELETE"],
        &format!("{url}/nodes"),
    );
    assert_eq!(code, 405, "{body}");
    let (code, body) = curl(
        &ca,
        &[
            "-H",
            &bearer(&token),
            "-X",
            "POST",
            "--data",
            "{\"replicas\": -1}",
        ],
        &format!("{url}/services/sleeper/scale"),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(
        &ca,
        &["-H", &bearer(&token)],
        &format!("{url}/nodes/nobody/sample"),
    );
    assert_eq!(code, 404, "{body}");
    let (code, body) = curl(
        &ca,
        &["-H", &bearer(&token)],
        &format!("{url}/nodes/n1/history?tier=week"),
    );
    assert_eq!(code, 400, "{body}");

    // An admin certificate is let in as its admin; a node's certificate is not.
    let credential: toml::Value = toml::from_str(
        &std::fs::read_to_string(cluster.path().join("admin.credential.toml"))
            .expect("the admin credential"),
    )
    .expect("TOML");
    let admin_certificate = cluster.path().join("admin.crt");
    let admin_key = cluster.path().join("admin.key");
    std::fs::write(
        &admin_certificate,
        credential["certificate_pem"].as_str().expect("pem"),
    )
    .expect("write");
    std::fs::write(&admin_key, credential["key_pem"].as_str().expect("pem")).expect("write");
    let (code, body) = curl(
        &ca,
        &[
            "--cert",
            admin_certificate.to_str().expect("utf-8"),
            "--key",
            admin_key.to_str().expect("utf-8"),
        ],
        &format!("{url}/whoami"),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["principal"], "admin/admin", "{body}");
    let node_tls = cluster.path().join("n2").join("tls");
    let (code, body) = curl(
        &ca,
        &[
            "--cert",
            node_tls.join("node.crt").to_str().expect("utf-8"),
            "--key",
            node_tls.join("node.key").to_str().expect("utf-8"),
        ],
        &format!("{url}/nodes"),
    );
    assert_eq!(code, 403, "{body}");

    // Revoked: refused on every node at once (each reads its own replica).
    cluster.bramble_ok(&["token", "rm", "ci"]);
    wait_until(
        "every node refuses the revoked token",
        Duration::from_secs(5),
        || {
            urls.iter().all(|node_url| {
                curl(&ca, &["-H", &bearer(&token)], &format!("{node_url}/nodes")).0 == 401
            })
        },
    );
    let missing = cluster.bramble(&["token", "rm", "ci"]);
    assert!(
        !missing.success && missing.stderr.contains("no token named ci"),
        "{}",
        missing.stderr
    );

    // Expired.
    let short = cluster
        .bramble_ok(&["token", "create", "short", "--expires", "1s", "--json"])
        .json();
    let short = short["token"].as_str().expect("a token").to_string();
    get(&ca, &short, &format!("{url}/whoami"));
    std::thread::sleep(Duration::from_millis(1500));
    let (code, body) = curl(&ca, &["-H", &bearer(&short)], &format!("{url}/whoami"));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
}

/// curl with a cookie jar and extra headers; the status, the headers and the body.
fn curl_session(ca: &Path, jar: &Path, extra: &[&str], url: &str) -> (u16, String, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg("--cookie")
        .arg(jar)
        .arg("--cookie-jar")
        .arg(jar)
        .args(["--dump-header", "-", "--write-out", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no status: {text}"));
    (code, head.to_lowercase(), body.to_string())
}

#[test]
fn the_dashboard_logs_in_with_its_password_only_and_guards_its_sessions() {
    let cluster = TestCluster::up(2);
    let ca = cluster.path().join("ca.pem");
    let listing = cluster.bramble_ok(&["dashboard", "--json"]).json();
    let page = listing["nodes"][0]["url"]
        .as_str()
        .expect("a page URL")
        .to_string();
    let password_file = listing["password_file"]
        .as_str()
        .expect("up generated a password");
    let password = std::fs::read_to_string(password_file).expect("the password file");
    let mode = std::fs::metadata(password_file).expect("metadata");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    cluster.bramble_ok(&["api", "--write-ca", ca.to_str().expect("utf-8")]);
    let jar = cluster.path().join("cookies.txt");
    let session_url = format!("{page}api/v1/session");
    let login = |password: &str| {
        let body = serde_json::json!({ "password": password }).to_string();
        curl_session(
            &ca,
            &jar,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                &body,
            ],
            &session_url,
        )
    };

    // The page itself is public and locked down by its policy; the data is not.
    let (code, head, body) = curl_session(&ca, &jar, &[], &page);
    assert_eq!(code, 200);
    assert!(body.contains("/assets/dashboard.js"), "{body}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    let (code, _, _) = curl_session(&ca, &jar, &[], &format!("{page}api/v1/nodes"));
    assert_eq!(code, 401);

    // A wrong password is refused, and so is a right one after too many wrong ones.
    let (code, _, body) = login("not the password at all");
    assert_eq!(code, 401, "{body}");
    for _ in 0..4 {
        login("still not the password");
    }
    let (code, head, body) = login(password.trim());
    assert_eq!(code, 429, "{body}");
    assert!(head.contains("retry-after:"), "{head}");

    // A fresh cluster's node has its own brakes; there the right password opens a session.
    let other_page = listing["nodes"][1]["url"]
        .as_str()
        .expect("a page URL")
        .to_string();
    let other_session = format!("{other_page}api/v1/session");
    let body = serde_json::json!({ "password": password.trim() }).to_string();
    let (code, head, body) = curl_session(
        &ca,
        &jar,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
        ],
        &other_session,
    );
    assert_eq!(code, 200, "{body}");
    for flag in ["httponly", "secure", "samesite=strict"] {
        assert!(head.contains(flag), "set-cookie lacks {flag}: {head}");
    }
    let csrf = json(&body)["csrf"]
        .as_str()
        .expect("a CSRF token")
        .to_string();
    let (code, _, body) = curl_session(&ca, &jar, &[], &format!("{other_page}api/v1/nodes"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body).as_array().map(Vec::len), Some(2));

    // The live stream: an event a second with every node and its last second.
    let output = Command::new("curl")
        .args(["--silent", "--no-buffer", "--max-time", "3", "--cacert"])
        .arg(&ca)
        .arg("--cookie")
        .arg(&jar)
        .arg(format!("{other_page}api/v1/events"))
        .output()
        .expect("curl");
    let stream = String::from_utf8_lossy(&output.stdout);
    let events: Vec<Value> = stream
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(json)
        .collect();
    assert!(events.len() >= 2, "{stream}");
    let last = events.last().expect("an event");
    assert_eq!(last["nodes"].as_array().map(Vec::len), Some(2), "{last}");
    assert!(last["nodes"][0]["point"].is_array(), "{last}");

    // Actions need the session's CSRF token and this origin.
    cluster.bramble_ok(&["service", "create", "idle", "--", "sleep", "600"]);
    let scale = [
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        "{\"replicas\": 2}",
    ];
    let scale_url = format!("{other_page}api/v1/services/idle/scale");
    let (code, _, body) = curl_session(&ca, &jar, &scale, &scale_url);
    assert_eq!(code, 403, "{body}");
    let csrf_header = format!("X-CSRF-Token: {csrf}");
    let mut with_token = scale.to_vec();
    with_token.extend(["-H", &csrf_header]);
    let mut from_elsewhere = with_token.clone();
    from_elsewhere.extend(["-H", "Origin: https://attacker.example"]);
    let (code, _, body) = curl_session(&ca, &jar, &from_elsewhere, &scale_url);
    assert_eq!(code, 403, "{body}");
    let (code, _, body) = curl_session(&ca, &jar, &with_token, &scale_url);
    assert_eq!(code, 200, "{body}");

    // A new password ends every session; logging out ends one.
    cluster.bramble_ok(&["dashboard", "--set-password"]);
    let (code, _, _) = curl_session(&ca, &jar, &[], &format!("{other_page}api/v1/nodes"));
    assert_eq!(code, 401, "the old session ended with the old password");
    let (code, _, _) = curl_session(
        &ca,
        &jar,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            &body_of(password.trim()),
        ],
        &other_session,
    );
    assert_eq!(code, 401, "the old password no longer opens one");
    let new_password = cluster.path().join("new-password");
    std::fs::write(&new_password, "a brand new dashboard password\n").expect("write");
    cluster.bramble_ok(&[
        "dashboard",
        "--set-password",
        "--password-file",
        new_password.to_str().expect("utf-8"),
    ]);
    let (code, _, body) = curl_session(
        &ca,
        &jar,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            &body_of("a brand new dashboard password"),
        ],
        &other_session,
    );
    assert_eq!(code, 200, "{body}");
    let csrf = json(&body)["csrf"]
        .as_str()
        .expect("a CSRF token")
        .to_string();
    let (code, _, _) = curl_session(
        &ca,
        &jar,
        &["-X", "DELETE", "-H", &format!("X-CSRF-Token: {csrf}")],
        &other_session,
    );
    assert_eq!(code, 200);
    let (code, _, _) = curl_session(&ca, &jar, &[], &format!("{other_page}api/v1/nodes"));
    assert_eq!(code, 401, "logged out");
    let short_file = cluster.path().join("short-password");
    std::fs::write(&short_file, "short\n").expect("write");
    let short = cluster.bramble(&[
        "dashboard",
        "--set-password",
        "--password-file",
        short_file.to_str().expect("utf-8"),
    ]);
    assert!(
        !short.success && short.stderr.contains("at least 12 characters"),
        "{}",
        short.stderr
    );
}

fn body_of(password: &str) -> String {
    serde_json::json!({ "password": password }).to_string()
}
