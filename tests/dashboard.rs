//! The dashboard's drill (issue 12) with a real headless Chromium (Debian's `chromium`,
//! driven over the DevTools protocol by `tests/harness/chromium.rs`) against real agents
//! from `bramble up`, the browser trusting the cluster CA the way a user's would after
//! importing it:
//!
//! - a wrong password is refused; the generated one (`<dir>/dashboard-password`) logs in,
//!   with a session cookie that is HttpOnly, Secure and SameSite=Strict;
//! - the grid shows every node, and a node turns red within 3 s of `chaos kill`;
//! - the balancers panel shows the demo's web servers up, in green;
//! - a node's charts draw its last hour; the services panel scales a service through the
//!   page (its CSRF-guarded action); the page fits a phone's screen; logging out ends it;
//! - the page raises no script error (its policy allows this origin's files only).
//!
//! Screenshots are kept in `target/test-artefacts/dashboard/`.

mod harness;

use std::time::Duration;

use harness::TestCluster;
use harness::chromium::{Browser, LaunchOptions, artefact_dir};

const STEP: Duration = Duration::from_secs(15);

/// JavaScript: whether the element with this id is shown (not merely in the DOM).
fn shown(id: &str) -> String {
    format!(
        "(() => {{ const element = document.getElementById('{id}'); return !!element && element.getClientRects().length > 0 && getComputedStyle(element).display !== 'none'; }})()"
    )
}

#[test]
fn a_browser_logs_in_sees_every_node_and_sees_a_killed_one_turn_red() {
    let artefacts = artefact_dir("dashboard");
    // With the demo: the HA website's balancer and its web servers (a service).
    let cluster = TestCluster::up_with(3, &[]);
    let listing = cluster.bramble_ok(&["dashboard", "--json"]).json();
    let page = listing["nodes"][0]["url"]
        .as_str()
        .expect("n1 serves the dashboard")
        .to_string();
    let password = std::fs::read_to_string(
        listing["password_file"]
            .as_str()
            .expect("up generated a password"),
    )
    .expect("the password file");
    let ca_path = cluster.path().join("ca.pem");
    cluster.bramble_ok(&["api", "--write-ca", ca_path.to_str().expect("utf-8")]);
    let ca = std::fs::read_to_string(&ca_path).expect("the CA");
    let browser = Browser::launch_with(
        LaunchOptions::default()
            .trust_certificates(&ca)
            .expect("the CA's key"),
    )
    .expect("starting chromium (apt-get install chromium)");

    // The login form; a wrong password is refused.
    assert_eq!(browser.navigate(&page).expect("the page loads"), Some(200));
    browser
        .wait_for(&format!("{} && !{}", shown("login"), shown("app")), STEP)
        .expect("the login form, alone");
    browser
        .fill("#password", "certainly not the password")
        .expect("typing");
    browser.click("#login-button").expect("clicking");
    browser
        .wait_for(
            "document.getElementById('login-error').textContent.includes('Wrong password')",
            STEP,
        )
        .expect("a wrong password is refused");
    assert_eq!(
        browser.evaluate(&shown("app")).expect("evaluate"),
        serde_json::Value::Bool(false),
        "nothing of the cluster is shown"
    );
    browser
        .screenshot(&artefacts.join("login-refused.png"))
        .expect("screenshot");

    // The right one: every node in the grid.
    browser.fill("#password", password.trim()).expect("typing");
    browser.click("#login-button").expect("clicking");
    browser
        .wait_for(
            &format!(
                "{} && !{} && document.querySelectorAll('#grid .node[data-health]').length === 3",
                shown("grid"),
                shown("login")
            ),
            STEP,
        )
        .expect("every node in the grid, and the login gone");
    browser
        .wait_for(
            "[...document.querySelectorAll('#grid .node')].every((card) => card.dataset.health !== 'down')",
            STEP,
        )
        .expect("every node up");
    let cookies = browser.cookies().expect("cookies");
    let session = cookies
        .iter()
        .find(|cookie| cookie.name == "bramble_session")
        .expect("a session cookie");
    assert!(session.http_only && session.secure, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Strict"), "{session:?}");
    browser
        .screenshot(&artefacts.join("grid.png"))
        .expect("screenshot");

    // The balancers in HAProxy's stats view: the demo's web servers up, in green.
    browser
        .click("#tabs button[data-tab='balancers']")
        .expect("the balancers tab");
    browser
        .wait_for(
            "document.querySelectorAll('#balancers td.status.up').length >= 2 && getComputedStyle(document.querySelector('#balancers td.status.up')).backgroundColor === 'rgb(46, 125, 50)'",
            STEP,
        )
        .expect("the web servers up, in green");
    browser
        .screenshot(&artefacts.join("balancers.png"))
        .expect("screenshot");
    browser
        .click("#tabs button[data-tab='nodes']")
        .expect("the nodes tab");

    // A node's charts: its last hour, then live.
    browser
        .click("#grid .node[data-node='n2']")
        .expect("clicking n2");
    browser
        .wait_for(
            &format!(
                "{} && document.querySelectorAll('#chart-area .uplot').length === 6",
                shown("charts")
            ),
            STEP,
        )
        .expect("six charts for n2");
    browser
        .screenshot(&artefacts.join("charts.png"))
        .expect("screenshot");

    // A power cut: red within 3 s.
    let killed = std::time::Instant::now();
    cluster.chaos("kill", "n3");
    let seen = browser
        .wait_for(
            "document.querySelector(\"#grid .node[data-node='n3']\").dataset.health === 'down'",
            Duration::from_secs(3).saturating_sub(killed.elapsed()),
        )
        .expect("n3 turns red within 3 s of the kill");
    eprintln!(
        "n3 turned red {:.2} s after the kill",
        (killed.elapsed()).as_secs_f64()
    );
    let _ = seen;
    browser
        .screenshot(&artefacts.join("node-down.png"))
        .expect("screenshot");

    // An action through the page: the services panel scales a service (CSRF-guarded).
    cluster.bramble_ok(&["service", "create", "idle", "--", "sleep", "600"]);
    browser
        .click("#tabs button[data-tab='services']")
        .expect("the services tab");
    browser
        .wait_for(
            "document.querySelector(\"#services tr[data-service='idle']\") !== null",
            STEP,
        )
        .expect("the service is listed");
    browser
        .evaluate(
            "document.querySelector(\"#services tr[data-service='idle'] button\").click(); true",
        )
        .expect("clicking +1");
    browser
        .wait_for(
            "document.querySelector(\"#services tr[data-service='idle'] td:nth-child(3)\").textContent.endsWith('/2')",
            STEP,
        )
        .expect("scaled to 2 through the page");
    let services = cluster.bramble_ok(&["service", "ls", "--json"]).json();
    assert_eq!(services[0]["replicas"], 2, "{services}");

    // A phone's screen: nothing wider than the screen.
    browser.set_viewport(390, 844, true).expect("a phone");
    browser
        .click("#tabs button[data-tab='nodes']")
        .expect("the nodes tab");
    browser
        .wait_for(
            "document.documentElement.scrollWidth <= window.innerWidth",
            STEP,
        )
        .expect("the page fits a phone's width");
    browser
        .screenshot(&artefacts.join("phone.png"))
        .expect("screenshot");

    // Logging out ends the session.
    browser.click("#logout").expect("log out");
    browser
        .wait_for(&format!("{} && !{}", shown("login"), shown("app")), STEP)
        .expect("back at the login");
    let cookies = browser.cookies().expect("cookies");
    assert!(
        !cookies
            .iter()
            .any(|cookie| cookie.name == "bramble_session" && !cookie.value.is_empty()),
        "{cookies:?}"
    );
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "script errors: {errors:?}");
}
