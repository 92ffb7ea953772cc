//! The web dashboard in a real browser (headless Chromium over WebDriver,
//! see `browser.rs`), against a real server and watching clients on
//! loopback: log in, browse, upload through the page into a client's
//! folder, a client's save appearing on the open page, names shown as
//! text, forms refused without their form token, a read-only token's page
//! and forged writes, a removed token's session. Each page is saved as a
//! screenshot under `target/web-screenshots/`.

use std::time::Duration;

use serde_json::Value;
use thirtyfour::prelude::*;

use crate::browser::Browser;
use crate::harness::*;

const XSS_NAME: &str = "<img src=x onerror=alert(1)>.txt";

/// Runs `script` (which returns a promise) in the page and returns its
/// result.
async fn run(browser: &Browser, script: &str, args: Vec<Value>) -> Value {
    browser.driver().execute(script, args).await.unwrap_or_else(|e| panic!("{script}: {e}")).json().clone()
}

/// A same-origin form post from the page (with the session's cookie), as a
/// forged request would be: its HTTP status and `syncstore-reason`.
async fn post_from_page(browser: &Browser, url: &str, form: Value) -> (u64, String) {
    let answer = run(
        browser,
        "return fetch(arguments[0], { method: 'POST', body: new URLSearchParams(arguments[1]), redirect: 'manual' })
            .then(r => [r.status, r.headers.get('syncstore-reason') || '']);",
        vec![Value::from(url), form],
    )
    .await;
    (answer[0].as_u64().unwrap(), answer[1].as_str().unwrap().to_owned())
}

async fn log_in(browser: &Browser, web: &str, token: &str) {
    browser.driver().goto(format!("{web}/files")).await.unwrap();
    browser.wait_for_text("h1", "Log in").await;
    browser.driver().find(By::Id("token")).await.unwrap().send_keys(token).await.unwrap();
    browser.driver().find(By::Id("login")).await.unwrap().click().await.unwrap();
    browser.wait_for_text("#who", "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_browses_uploads_and_follows_changes_in_a_browser() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with_web(|c| c.tokens = Some(path)).await;
    let web = server.web_url();
    let client = TestClient::start_secure(&server.url(), token(&tokens.alice));
    client.write("docs/readme.txt", "read me");
    eventually("the client's first file reached the server", || {
        server_has(&server, &tokens.alice, "docs/readme.txt")
    })
    .await;
    let browser = Browser::start().await;

    // Without a session every page leads to the login; a wrong token is
    // refused there.
    browser.driver().goto(format!("{web}/files")).await.unwrap();
    browser.wait_for_text("h1", "Log in").await;
    browser.screenshot("login").await;
    browser.driver().find(By::Id("token")).await.unwrap().send_keys("sst_wrong").await.unwrap();
    browser.driver().find(By::Id("login")).await.unwrap().click().await.unwrap();
    browser.wait_for_text("#error", "not valid").await;
    log_in(&browser, &web, &tokens.alice).await;
    browser.wait_for_text("#who", "alice").await;
    browser.wait_for_text("#listing a.name", "docs/").await;

    // A file saved in a client's folder appears on the open page, without
    // a reload (the marker set on this page's window survives).
    run(&browser, "window.stillThisPage = 'yes'; return 1;", vec![]).await;
    client.write("from-client.txt", "saved in a folder");
    browser.wait_for_text("#listing a.name", "from-client.txt").await;
    browser.wait_for_text("#activity li", "from-client.txt").await;
    assert_eq!(run(&browser, "return window.stillThisPage || 'reloaded';", vec![]).await, "yes");

    // An upload through the page reaches the watching client's folder.
    let local = tempfile::tempdir().unwrap();
    let picked = local.path().join("from-browser.txt");
    let content = "uploaded through the page\n".repeat(1000);
    std::fs::write(&picked, &content).unwrap();
    let input = browser.driver().find(By::Id("upload-file")).await.unwrap();
    input.send_keys(picked.to_str().unwrap()).await.unwrap();
    browser.driver().find(By::Id("upload")).await.unwrap().click().await.unwrap();
    eventually("the upload reached the client's folder", || {
        client.read("from-browser.txt").as_deref() == Some(content.as_bytes())
    })
    .await;
    browser.wait_for_text("#listing a.name", "from-browser.txt").await;
    browser.screenshot("files").await;

    // A name that is markup shows as text; nothing of it runs.
    client.write(XSS_NAME, "just a name");
    browser.wait_for_text("#listing a.name", XSS_NAME).await;
    assert!(!browser.exists("#listing img").await, "a file name became an element");
    assert!(browser.driver().get_alert_text().await.is_err(), "a file name ran a script");

    // A new folder, then the file's page: details, versions, download.
    browser.driver().find(By::Id("folder-name")).await.unwrap().send_keys("made-on-the-web").await.unwrap();
    browser.driver().find(By::Id("mkdir")).await.unwrap().click().await.unwrap();
    eventually("the new folder reached the client", || client.path("made-on-the-web").is_dir()).await;
    browser.driver().find(By::LinkText("from-browser.txt")).await.unwrap().click().await.unwrap();
    browser.wait_for_text("#file-path", "from-browser.txt").await;
    browser.wait_for_text("#versions td", "web-dashboard").await;
    browser.screenshot("file-details").await;
    let downloaded =
        run(&browser, "return fetch(document.getElementById('download').href).then(r => r.text());", vec![])
            .await;
    assert_eq!(downloaded, Value::from(content.clone()));

    // A form without its form token is refused, and changes nothing.
    let version = browser.text_of("#file-version").await;
    let (status, reason) = post_from_page(
        &browser,
        "/delete",
        serde_json::json!({ "path": "from-browser.txt", "version": version }),
    )
    .await;
    assert_eq!((status, reason.as_str()), (403, "csrf"));
    assert!(server_has(&server, &tokens.alice, "from-browser.txt"));
    // A form far larger than any the pages make is refused unread.
    let huge = run(
        &browser,
        "return fetch('/login', { method: 'POST', body: new URLSearchParams({ token: 'x'.repeat(9 << 20) }) })
            .then(r => r.status);",
        vec![],
    )
    .await;
    assert_eq!(huge, 413);

    // A lock taken on the page shows on the locks page and to clients.
    browser.driver().find(By::Id("lock-note")).await.unwrap().send_keys("editing on the web").await.unwrap();
    browser.driver().find(By::Id("lock")).await.unwrap().click().await.unwrap();
    browser.wait_for_text("#file-lock", "editing on the web").await;
    browser.driver().goto(format!("{web}/locks")).await.unwrap();
    browser.wait_for_text("#locks td", "from-browser.txt").await;
    browser.screenshot("locks").await;
    browser.driver().goto(format!("{web}/status")).await.unwrap();
    browser.wait_for_text("#status th", "Head seq").await;
    browser.screenshot("status").await;

    // Deleting through the page removes the file from the client's folder.
    browser.driver().goto(format!("{web}/file?path=from-client.txt")).await.unwrap();
    browser.driver().find(By::Id("delete")).await.unwrap().click().await.unwrap();
    eventually("the deletion reached the client", || client.read("from-client.txt").is_none()).await;

    // A rename through the page moves the client's file (past the page's
    // own lock on it).
    browser.driver().goto(format!("{web}/file?path=from-browser.txt")).await.unwrap();
    let to = browser.driver().find(By::Id("move-to")).await.unwrap();
    to.clear().await.unwrap();
    to.send_keys("moved/renamed.txt").await.unwrap();
    browser.driver().find(By::Id("move")).await.unwrap().click().await.unwrap();
    eventually("the move reached the client", || {
        client.read("moved/renamed.txt").as_deref() == Some(content.as_bytes())
            && client.read("from-browser.txt").is_none()
    })
    .await;
    browser.wait_for_text("#versions td", "move").await;

    // On a phone-sized screen the files page needs no sideways scrolling.
    browser.driver().set_window_rect(0, 0, 390, 844).await.unwrap();
    browser.driver().goto(format!("{web}/files")).await.unwrap();
    browser.wait_for_text("#listing a.name", "moved/").await;
    let overflow =
        run(&browser, "return document.documentElement.scrollWidth - window.innerWidth;", vec![]).await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page is {overflow} px wider than a phone's screen");
    browser.screenshot("files-phone").await;

    browser.quit().await;
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_token_gets_no_write_controls_and_its_forged_writes_are_refused() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with_web(|c| c.tokens = Some(path)).await;
    let web = server.web_url();
    let mut alice = rpc_with(&server.url(), &token(&tokens.alice));
    let stored = upload(&mut alice, "plans.txt", b"alice's plans", 0).await.unwrap();
    let browser = Browser::start().await;

    log_in(&browser, &web, &tokens.alice_ro).await;
    browser.wait_for_text("#who", "read-only").await;
    browser.wait_for_text("#listing a.name", "plans.txt").await;
    assert!(!browser.exists("#upload-form").await, "a read-only page offers uploads");
    assert!(!browser.exists("#mkdir").await, "a read-only page offers new folders");
    browser.screenshot("read-only-files").await;
    browser.driver().goto(format!("{web}/file?path=plans.txt")).await.unwrap();
    browser.wait_for_text("#file-path", "plans.txt").await;
    assert!(!browser.exists("#delete").await, "a read-only page offers deletion");
    assert!(!browser.exists("#lock").await, "a read-only page offers locks");

    // A forged delete with the session's own form token: the service
    // refuses it, not only the page.
    let csrf = run(&browser, "return document.querySelector('input[name=csrf]').value;", vec![]).await;
    let (status, reason) = post_from_page(
        &browser,
        "/delete",
        serde_json::json!({ "csrf": csrf, "path": "plans.txt", "version": stored.version.to_string() }),
    )
    .await;
    assert_eq!((status, reason.as_str()), (403, "permission-denied"));
    assert!(server_has(&server, &tokens.alice, "plans.txt"));

    // Removing the token ends its session: the next page is the login.
    let mut file = sync_server::auth::TokenFile::load(&tokens.path).unwrap();
    assert!(file.remove("alice-viewer"));
    file.save(&tokens.path).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        browser.driver().goto(format!("{web}/files")).await.unwrap();
        let url = browser.driver().current_url().await.unwrap();
        if url.path() == "/login" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the removed token's session went on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.wait_for_text("#error", "session ended").await;
    browser.quit().await;
}

/// Whether `path` is a live file on the server, as `token` sees it.
fn server_has(server: &TestServer, token_value: &str, path: &str) -> bool {
    let (url, security, path) = (server.url(), token(token_value), path.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut rpc = rpc_with(&url, &security);
            matches!(
                rpc.stat(syncstore::pb::StatRequest { path }).await,
                Ok(r) if r.get_ref().entry.as_ref().is_some_and(|e| !e.deleted)
            )
        })
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_restores_undeletes_and_rewinds_through_the_page() {
    let server = TestServer::start_with_web(|_| {}).await;
    let web = server.web_url();
    let (a, b) = (TestClient::start(&server.url()), TestClient::start(&server.url()));
    let both_have = |rel: &str, data: Option<&str>| {
        let want = data.map(|d| d.as_bytes().to_vec());
        a.read(rel) == want && b.read(rel) == want
    };
    a.write("notes.txt", "first draft");
    eventually("the first draft reached b", || both_have("notes.txt", Some("first draft"))).await;
    a.write("notes.txt", "second draft");
    eventually("the second draft reached b", || both_have("notes.txt", Some("second draft"))).await;
    let browser = Browser::start().await;
    // A server without tokens: the login opens a session at once.
    browser.driver().goto(format!("{web}/files")).await.unwrap();
    browser.wait_for_text("#who", "anonymous").await;

    // Restore the first draft from the file's page: every client gets it.
    browser.driver().goto(format!("{web}/file?path=notes.txt")).await.unwrap();
    browser.wait_for_text("#versions td", "write").await;
    let restores = browser.driver().find_all(By::Css("button.restore")).await.unwrap();
    assert_eq!(restores.len(), 1, "only the first draft is not the current version");
    restores[0].click().await.unwrap();
    eventually("the restored draft reached both clients", || both_have("notes.txt", Some("first draft")))
        .await;
    browser.wait_for_text("#versions td", "restore").await;
    browser.screenshot("file-history").await;

    // Undelete one chosen file from the trash, then every match of a search.
    a.write("keep/a.txt", "a");
    a.write("keep/b.txt", "b");
    eventually("a and b reached b", || {
        both_have("keep/a.txt", Some("a")) && both_have("keep/b.txt", Some("b"))
    })
    .await;
    std::fs::remove_file(a.path("keep/a.txt")).unwrap();
    std::fs::remove_file(a.path("keep/b.txt")).unwrap();
    eventually("the deletions reached b", || both_have("keep/a.txt", None) && both_have("keep/b.txt", None))
        .await;
    browser.driver().goto(format!("{web}/trash")).await.unwrap();
    browser.wait_for_text("#trash td", "keep/b.txt").await;
    browser.wait_for_text("#trash td", "keep/a.txt").await;
    browser.screenshot("trash").await;
    browser
        .driver()
        .find(By::Css("input[aria-label='Undelete keep/a.txt']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.driver().find(By::Id("undelete")).await.unwrap().click().await.unwrap();
    browser.wait_for_text("#trash-message", "1 file(s) brought back").await;
    eventually("a.txt came back to both clients", || both_have("keep/a.txt", Some("a"))).await;
    assert!(both_have("keep/b.txt", None), "an unchosen file came back");
    browser.driver().find(By::Id("glob")).await.unwrap().send_keys("b.*").await.unwrap();
    browser.driver().find(By::Id("trash-search")).await.unwrap().click().await.unwrap();
    browser.wait_gone("#trash td", "keep/a.txt").await;
    browser.driver().find(By::Id("undelete-all")).await.unwrap().click().await.unwrap();
    eventually("b.txt came back to both clients", || both_have("keep/b.txt", Some("b"))).await;

    // Rewind: the preview lists exactly what the rewind then does.
    let point = server.rpc().await.server_info(syncstore::pb::ServerInfoRequest {}).await.unwrap();
    let point = point.into_inner().head_seq;
    a.write("new.txt", "created after the point");
    a.write("notes.txt", "third draft");
    std::fs::remove_file(a.path("keep/a.txt")).unwrap();
    eventually("the later changes reached b", || {
        both_have("new.txt", Some("created after the point"))
            && both_have("notes.txt", Some("third draft"))
            && both_have("keep/a.txt", None)
    })
    .await;
    browser.driver().goto(format!("{web}/rewind?under=&to={point}")).await.unwrap();
    browser.wait_for_text("#rewind-summary", "would change").await;
    let preview = paths_listed(&browser).await;
    assert_eq!(preview, ["keep/a.txt", "new.txt", "notes.txt"]);
    browser.screenshot("rewind-preview").await;
    eventually("nothing changed with the preview", || both_have("new.txt", Some("created after the point")))
        .await;
    browser.driver().find(By::Id("rewind")).await.unwrap().click().await.unwrap();
    browser.wait_for_text("#rewind-summary", "changed").await;
    assert_eq!(paths_listed(&browser).await, preview, "the rewind did other than its preview");
    eventually("the rewind reached both clients", || {
        both_have("new.txt", None)
            && both_have("notes.txt", Some("first draft"))
            && both_have("keep/a.txt", Some("a"))
    })
    .await;

    // The rewind labelled the state before it; a label set on the page joins it.
    browser.driver().goto(format!("{web}/labels")).await.unwrap();
    browser.wait_for_text("#labels td", "before-rewind-").await;
    browser.driver().find(By::Id("label-name")).await.unwrap().send_keys("after-rewind").await.unwrap();
    browser.driver().find(By::Id("set-label")).await.unwrap().click().await.unwrap();
    browser.wait_for_text("#labels td", "after-rewind").await;
    browser.screenshot("labels").await;

    // The service page (an open server's caller may see it all) lists the
    // two watching clients at their cursors.
    browser.driver().goto(format!("{web}/status")).await.unwrap();
    browser.wait_for_text("#status th", "Backend").await;
    let rows = browser.driver().find_all(By::Css("#clients tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 2, "the two clients follow the feed");
    browser.wait_for_text("#clients td", "anonymous").await;
    browser.screenshot("service-state").await;

    browser.quit().await;
    a.stop().await;
    b.stop().await;
}

/// The paths of a rewind page's table.
async fn paths_listed(browser: &Browser) -> Vec<String> {
    let mut paths = Vec::new();
    for cell in browser.driver().find_all(By::Css("#rewind-actions td.path")).await.unwrap() {
        paths.push(cell.text().await.unwrap());
    }
    paths
}

/// An HTTP/1.1 answer: status, headers (lower-cased names), body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request from outside any browser (no session, no cookie unless
/// given), as someone who only has a link would make it.
pub(crate) async fn http(
    web: &str,
    method: &str,
    target: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Answer {
    let addr = web.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = exchange(stream, &request_text(addr, method, target, cookie, form)).await;
    parse_answer(&raw)
}

fn request_text(host: &str, method: &str, target: &str, cookie: Option<&str>, form: Option<&str>) -> String {
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        request.push_str(&format!("Cookie: {c}\r\n"));
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    request
}

/// Sends `request` and reads until the server closes.
async fn exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    request: &str,
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw)).await.expect("an answer in time");
    // A TLS peer may end without close_notify; what came is the answer.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
    raw
}

fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        let (mut plain, mut rest) = (Vec::new(), &body[..]);
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            plain.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        body = plain;
    }
    Answer { status, headers, body }
}

/// The share links listed on the shares page, newest first.
async fn links_listed(browser: &Browser, web: &str) -> Vec<String> {
    browser.driver().goto(format!("{web}/shares")).await.unwrap();
    browser.wait_for_text("h1", "Share links").await;
    let mut links = Vec::new();
    for a in browser.driver().find_all(By::Css("#shares a.link")).await.unwrap() {
        links.push(a.text().await.unwrap());
    }
    links
}

#[tokio::test(flavor = "multi_thread")]
async fn share_links_work_without_a_login_within_their_file_or_folder_until_revoked_or_expired() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with_web(|c| c.tokens = Some(path)).await;
    let web = server.web_url();
    let mut alice = rpc_with(&server.url(), &token(&tokens.alice));
    upload(&mut alice, "docs/report.txt", b"the report", 0).await.unwrap();
    upload(&mut alice, "docs/sub/deep.txt", b"deep inside", 0).await.unwrap();
    upload(&mut alice, "secret.txt", b"not shared", 0).await.unwrap();
    let browser = Browser::start().await;
    log_in(&browser, &web, &tokens.alice).await;

    // A file's link: its page and its content, with no login at all.
    browser.driver().goto(format!("{web}/file?path=docs/report.txt")).await.unwrap();
    browser.driver().find(By::Id("share")).await.unwrap().click().await.unwrap();
    let file_link = links_listed(&browser, &web).await.remove(0);
    let page = http(&web, "GET", &file_link, None, None).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("report.txt"));
    let got = http(&web, "GET", &format!("{file_link}/download"), None, None).await;
    assert_eq!((got.status, got.body.as_slice()), (200, &b"the report"[..]));
    // Its own file only: a path given to a file's link is ignored.
    let got = http(&web, "GET", &format!("{file_link}/download?path=secret.txt"), None, None).await;
    assert_eq!(got.body, b"the report");

    // A folder's link with a password: asked for, refused when wrong.
    browser.driver().goto(format!("{web}/files?dir=docs")).await.unwrap();
    browser.driver().find(By::Id("share-password")).await.unwrap().send_keys("hunter2").await.unwrap();
    browser.driver().find(By::Id("share")).await.unwrap().click().await.unwrap();
    let folder_link = links_listed(&browser, &web).await.remove(0);
    assert_ne!(folder_link, file_link);
    browser.screenshot("share-links").await;
    let asked = http(&web, "GET", &folder_link, None, None).await;
    assert_eq!(asked.status, 401);
    assert!(asked.text().contains("id=\"share-password\""), "no password form: {}", asked.text());
    let denied = http(&web, "GET", &format!("{folder_link}/download?path=report.txt"), None, None).await;
    assert_eq!(denied.status, 401);
    let wrong = http(&web, "POST", &folder_link, None, Some("password=hunter3")).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let right = http(&web, "POST", &folder_link, None, Some("password=hunter2")).await;
    assert_eq!(right.status, 303);
    let grant = right.header("set-cookie").unwrap().split(';').next().unwrap().to_owned();
    let listing = http(&web, "GET", &folder_link, Some(&grant), None).await;
    assert_eq!(listing.status, 200);
    assert!(listing.text().contains("report.txt") && listing.text().contains("sub/"));
    assert!(!listing.text().contains("secret.txt"));
    let deep =
        http(&web, "GET", &format!("{folder_link}/download?path=sub/deep.txt"), Some(&grant), None).await;
    assert_eq!((deep.status, deep.body.as_slice()), (200, &b"deep inside"[..]));
    // Nothing outside its folder.
    for outside in ["../secret.txt", "%2E%2E/secret.txt", "sub/../../secret.txt", "/secret.txt/.."] {
        let got =
            http(&web, "GET", &format!("{folder_link}/download?path={outside}"), Some(&grant), None).await;
        assert!(got.status == 400 || got.status == 404, "{outside}: {} {}", got.status, got.text());
        assert!(!got.text().contains("not shared"));
    }
    // Guessing: ten wrong passwords in a minute, and the link takes no
    // more tries for now (the right one neither); a grant given before
    // still works.
    for _ in 0..9 {
        assert_eq!(http(&web, "POST", &folder_link, None, Some("password=guess")).await.status, 401);
    }
    let locked = http(&web, "POST", &folder_link, None, Some("password=hunter2")).await;
    assert_eq!(locked.status, 429);
    assert!(locked.header("set-cookie").is_none());
    assert_eq!(http(&web, "GET", &folder_link, Some(&grant), None).await.status, 200);
    // The grant opens its own link only.
    let other = http(&web, "GET", &format!("{folder_link}x"), Some(&grant), None).await;
    assert_eq!(other.status, 404);
    browser.driver().goto(format!("{web}{file_link}")).await.unwrap();
    browser.wait_for_text("#share-name", "report.txt").await;
    browser.screenshot("share-page").await;

    // Revoked: the very next request is refused (its record is read each
    // time); the other link goes on.
    browser.driver().goto(format!("{web}/shares")).await.unwrap();
    browser.driver().find(By::Css("#shares button.revoke")).await.unwrap().click().await.unwrap();
    browser.wait_for_text("#shares td.state", "revoked").await;
    let gone =
        http(&web, "GET", &format!("{folder_link}/download?path=report.txt"), Some(&grant), None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(http(&web, "GET", &file_link, None, None).await.status, 200);

    // Expired: works until its time, then not.
    // Whole seconds, as the form takes them.
    let expiry = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 8, 0).unwrap();
    browser.driver().goto(format!("{web}/file?path=docs/report.txt")).await.unwrap();
    let field = browser.driver().find(By::Id("share-expires")).await.unwrap();
    field.send_keys(expiry.format("%Y-%m-%dT%H:%M:%S").to_string()).await.unwrap();
    browser.driver().find(By::Id("share")).await.unwrap().click().await.unwrap();
    let brief = links_listed(&browser, &web).await.remove(0);
    assert_eq!(http(&web, "GET", &brief, None, None).await.status, 200);
    eventually_within(Duration::from_secs(20), "the link expired", || {
        let (web, brief) = (web.clone(), brief.clone());
        async move { http(&web, "GET", &brief, None, None).await.status == 404 }
    })
    .await;
    assert!(chrono::Utc::now() >= expiry, "the link stopped before its expiry");

    // A read-only token can make no link, even by a forged form.
    browser.driver().goto(format!("{web}/shares")).await.unwrap();
    let csrf = run(&browser, "return document.querySelector('input[name=csrf]').value;", vec![]).await;
    browser.driver().delete_all_cookies().await.unwrap();
    log_in(&browser, &web, &tokens.alice_ro).await;
    let csrf_ro = run(&browser, "return document.querySelector('input[name=csrf]').value;", vec![]).await;
    assert_ne!(csrf, csrf_ro);
    let (status, reason) =
        post_from_page(&browser, "/share", serde_json::json!({ "csrf": csrf_ro, "path": "secret.txt" }))
            .await;
    assert_eq!((status, reason.as_str()), (403, "permission-denied"));
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_certificate_the_dashboard_serves_tls_only_and_its_cookies_are_secure() {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
    let pki = Pki::new();
    let tls = pki.server_tls(false);
    let server = TestServer::start_with_web(|c| c.tls = Some(tls)).await;
    let addr = server.web.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.file("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(name, tcp).await.expect("a TLS handshake with the server's certificate");
    let answer =
        parse_answer(&exchange(stream, &request_text(&addr.to_string(), "GET", "/login", None, None)).await);
    // An open server: the login opens a session at once, in a Secure cookie.
    assert_eq!(answer.status, 303);
    let cookie = answer.header("set-cookie").unwrap();
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");

    // Plain HTTP on the same port gets no page.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = exchange(tcp, &request_text(&addr.to_string(), "GET", "/login", None, None)).await;
    assert!(
        !raw.starts_with(b"HTTP/1.1 3") && !raw.starts_with(b"HTTP/1.1 2"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

/// An HTML attribute's text: `&amp;` and numeric references decoded.
fn unescape(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let (entity, after) = rest[at + 1..].split_once(';').expect("an entity ends with ';'");
        let code = match entity.strip_prefix("#x").or_else(|| entity.strip_prefix("#X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => entity.strip_prefix('#').and_then(|d| d.parse().ok()),
        };
        match (entity, code.and_then(char::from_u32)) {
            ("amp", _) => out.push('&'),
            ("quot", _) => out.push('"'),
            (_, Some(c)) => out.push(c),
            _ => panic!("an unknown entity &{entity};"),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The session cookie (`name=value`) an answer sets.
fn cookie_of(answer: &Answer) -> String {
    let set = answer.header("set-cookie").expect("a cookie");
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_folder_pages_by_name_one_level_at_a_time() {
    let server = TestServer::start_with_web(|_| {}).await;
    let web = server.web_url();
    let mut rpc = server.rpc().await;
    // Two pages and a bit of files, a look-alike of a subfolder, and a
    // subfolder with no entry of its own whose paths sort among them.
    let mut want: Vec<String> = (0..410).map(|i| format!("f{i:03}.txt")).collect();
    want.extend(["sub.txt".to_owned(), "sub/".to_owned()]);
    for name in &want {
        let path = match name.strip_suffix('/') {
            Some(folder) => format!("big/{folder}/deep/x"),
            None => format!("big/{name}"),
        };
        upload(&mut rpc, &path, name.as_bytes(), 0).await.unwrap();
    }
    // An open server: the login opens a session at once.
    let cookie = cookie_of(&http(&web, "GET", "/login", None, None).await);

    let (mut seen, mut target, mut pages) = (Vec::new(), Some("/files?dir=big".to_owned()), 0);
    while let Some(at) = target.take() {
        let page = http(&web, "GET", &at, Some(&cookie), None).await;
        assert_eq!(page.status, 200, "{at}");
        let text = page.text();
        let names: Vec<String> = text
            .split("<a class=\"name\" href=\"")
            .skip(1)
            .map(|a| a.split_once('>').unwrap().1.split_once('<').unwrap().0.to_owned())
            .collect();
        assert!(names.len() <= 200, "a page of {} rows", names.len());
        seen.extend(names);
        target = text
            .split_once("<a rel=\"next\" href=\"")
            .map(|(_, rest)| unescape(rest.split_once('"').unwrap().0));
        pages += 1;
        assert!(pages <= 3, "a fourth page, at {target:?}");
    }
    assert_eq!(pages, 3);
    // Each row once, in name order (the made-up "sub/" where its first
    // path is, after "sub.txt"); nothing from below "sub".
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_without_its_form_token_is_refused() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with_web(|c| c.tokens = Some(path)).await;
    let web = server.web_url();
    let form = |csrf: &str| format!("token={}&csrf={csrf}", tokens.alice);
    let refused = |answer: &Answer| {
        assert_eq!(
            (answer.status, answer.header("syncstore-reason")),
            (403, Some("csrf")),
            "{}",
            answer.text()
        );
        assert!(answer.header("set-cookie").is_none(), "a refused login opened a session");
    };

    // The login page puts its form token in its form and in a cookie.
    let page = http(&web, "GET", "/login", None, None).await;
    assert_eq!(page.status, 200);
    let cookie = cookie_of(&page);
    let (name, csrf) = cookie.split_once('=').unwrap();
    assert_eq!(name, "syncstore_login");
    assert!(page.text().contains(&format!("name=\"csrf\" value=\"{csrf}\"")), "{}", page.text());

    // A right token posted from elsewhere (no cookie, no field, or one of
    // them only, or another page's) opens no session.
    refused(&http(&web, "POST", "/login", None, Some(&format!("token={}", tokens.alice))).await);
    refused(&http(&web, "POST", "/login", None, Some(&form(csrf))).await);
    refused(&http(&web, "POST", "/login", Some(&cookie), Some(&form(""))).await);
    refused(&http(&web, "POST", "/login", Some(&cookie), Some(&form(&"0".repeat(64)))).await);

    // With both it logs in.
    let answer = http(&web, "POST", "/login", Some(&cookie), Some(&form(csrf))).await;
    assert_eq!(answer.status, 303, "{}", answer.text());
    assert!(cookie_of(&answer).starts_with("syncstore_session="));
}

/// Logs in through the login form over plain HTTP; the session cookie.
async fn log_in_http(web: &str, token: &str) -> String {
    let page = http(web, "GET", "/login", None, None).await;
    let login_cookie = cookie_of(&page);
    let csrf = login_cookie.split_once('=').unwrap().1;
    let form = format!("token={token}&csrf={csrf}");
    let answer = http(web, "POST", "/login", Some(&login_cookie), Some(&form)).await;
    assert_eq!(answer.status, 303, "{}", answer.text());
    cookie_of(&answer)
}

/// The value of the row `name` of the service page's counters, if shown.
fn counter(page: &str, name: &str) -> Option<String> {
    let table = page.split_once("<table id=\"counters\">")?.1.split_once("</table>")?.0;
    let row = table.split_once(&format!("<th scope=\"row\">{name}</th><td>"))?.1;
    Some(row.split_once("</td>").unwrap().0.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_page_shows_an_admin_the_servers_counters() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with_web(|c| c.tokens = Some(path)).await;
    let web = server.web_url();
    let admin = log_in_http(&web, &tokens.admin).await;
    let status = || async { http(&web, "GET", "/status", Some(&admin), None).await.text() };
    assert_eq!(counter(&status().await, "Uploads").as_deref(), Some("0 (0 B)"));

    let mut rpc = rpc_with(&server.url(), &token(&tokens.alice));
    upload(&mut rpc, "counted.txt", b"12345", 0).await.unwrap();
    let page = status().await;
    assert_eq!(counter(&page, "Uploads").as_deref(), Some("1 (5 B)"), "{page}");
    assert!(counter(&page, "Commits").unwrap().starts_with("1 ("), "{page}");
    // A refused call counts: a second creation of the same path.
    upload(&mut rpc, "counted.txt", b"other", 0).await.unwrap_err();
    assert_eq!(counter(&status().await, "Refused or failed calls").as_deref(), Some("1"));

    // Not an admin: no counters.
    let alice = log_in_http(&web, &tokens.alice).await;
    let page = http(&web, "GET", "/status", Some(&alice), None).await.text();
    assert_eq!(counter(&page, "Uploads"), None, "{page}");
}
