//! The monitor's one outgoing HTTP request: a bounded POST over plain HTTP/1.1, for the
//! InfluxDB push and the alert webhook. hyper's low-level client connection (already a
//! dependency; no reqwest), one connection per request (`Connection: close`): a push every
//! ten seconds and an alert now and then do not need a pool.
//!
//! Bounded everywhere: the URL is checked once when the settings load; resolving and
//! connecting have their own timeout, the whole exchange another; only the first KiB of an
//! answer is read (for its error message). Plain `http://` only: the agent has no
//! certificate store for outside servers yet, so `https://` is refused with that reason
//! rather than sent in clear by surprise.
//!
//! An [`HttpTarget`] prints as `http://host:port` without its path: a webhook's path often
//! is its secret (`/services/T0/B0/XXXX`), and errors and logs must not carry it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest URL accepted in the settings.
pub const MAX_URL_BYTES: usize = 2048;
/// How much of an answer's body is kept (for an error message).
const MAX_ANSWER_BYTES: usize = 1024;

/// Where to POST: a checked `http://host[:port][/path]`.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpTarget {
    host: String,
    port: u16,
    /// Starts with `/`; may hold a query (webhooks).
    path: String,
}

impl fmt::Debug for HttpTarget {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{self}")
    }
}

impl fmt::Display for HttpTarget {
    /// Scheme, host and port only: the path may be a secret.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(formatter, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(formatter, "http://{}:{}", self.host, self.port)
        }
    }
}

impl HttpTarget {
    /// Parses and checks a URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<HttpTarget, String> {
        if url.len() > MAX_URL_BYTES {
            return Err(format!(
                "the URL has {} bytes; at most {MAX_URL_BYTES}",
                url.len()
            ));
        }
        if url
            .chars()
            .any(|character| character.is_control() || character.is_whitespace())
        {
            return Err("the URL holds spaces or control characters".to_string());
        }
        let lowered = url.to_ascii_lowercase();
        if lowered.starts_with("https://") {
            return Err(
                "https:// is not supported yet (the agent has no store of outside certificates); use http:// on a trusted network, or a local proxy"
                    .to_string(),
            );
        }
        if !lowered.starts_with("http://") {
            return Err("the URL must start with http://".to_string());
        }
        let rest = &url["http://".len()..];
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(
                "credentials in the URL are not accepted (the InfluxDB push takes influx_username and influx_password)"
                    .to_string(),
            );
        }
        let (host, port) = split_host_port(authority)?;
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if path.contains('#') {
            return Err("the URL must not have a #fragment".to_string());
        }
        Ok(HttpTarget { host, port, path })
    }

    /// The path (and query) the URL names, `/` at least.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `Host` header's value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The addresses the host resolves to (a literal address without a lookup).
    async fn resolve(&self) -> Result<Vec<SocketAddr>, PostError> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|error| PostError::Resolve {
                target: self.to_string(),
                message: error.to_string(),
            })?;
        let addresses: Vec<SocketAddr> = found.take(8).collect();
        if addresses.is_empty() {
            return Err(PostError::Resolve {
                target: self.to_string(),
                message: "no address".to_string(),
            });
        }
        Ok(addresses)
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address must be closed with ]")?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            after => Some(
                after
                    .strip_prefix(':')
                    .ok_or("only :port may follow an IPv6 address")?,
            ),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".to_string());
    }
    if !host.contains(':')
        && !host.chars().all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '.' | '-' | '_')
        })
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let port = match port {
        None => 80,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("{text:?} is not a port (1 to 65535)")),
        },
    };
    Ok((host, port))
}

/// How long a POST may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Resolving the host and opening the TCP connection.
    pub connect: Duration,
    /// The whole exchange, connecting included.
    pub total: Duration,
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The start of the body, as text without control characters (for messages).
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a POST got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostError {
    #[error("could not resolve {target}: {message}")]
    Resolve { target: String, message: String },
    #[error("could not connect to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("{target} did not answer within {after:?}")]
    Timeout { target: String, after: Duration },
    #[error("talking to {target} failed: {message}")]
    Http { target: String, message: String },
}

/// POSTs `body` to `path_and_query` on `target`.
pub async fn post(
    target: &HttpTarget,
    path_and_query: &str,
    content_type: &'static str,
    authorization: Option<&HeaderValue>,
    body: Bytes,
    timeouts: Timeouts,
) -> Result<Answer, PostError> {
    let exchange = async {
        let stream = connect(target, timeouts.connect).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| http_error(target, &error))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path_and_query)
            .header(header::HOST, target.host_header())
            .header(header::CONTENT_TYPE, content_type)
            .header(
                header::USER_AGENT,
                concat!("bramble/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::CONNECTION, "close")
            .body(Full::new(body))
            .map_err(|error| http_error(target, &error))?;
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(HeaderName::from_static("authorization"), value.clone());
        }
        let answer = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|error| http_error(target, &error))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut kept = Vec::new();
            // Only the start is read: the connection closes after this exchange anyway.
            while kept.len() < MAX_ANSWER_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = MAX_ANSWER_BYTES - kept.len();
                            kept.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    Some(Err(error)) => return Err(http_error(target, &error)),
                    None => break,
                }
            }
            let body = String::from_utf8_lossy(&kept)
                .chars()
                .map(|character| {
                    if character.is_control() {
                        ' '
                    } else {
                        character
                    }
                })
                .collect::<String>()
                .trim()
                .to_string();
            Ok(Answer { status, body })
        };
        tokio::pin!(answer);
        tokio::pin!(connection);
        // The connection must be driven while the answer is awaited; it ends once the
        // server closes (Connection: close).
        tokio::select! {
            outcome = &mut answer => outcome,
            ended = &mut connection => match ended {
                Err(error) => Err(http_error(target, &error)),
                Ok(()) => answer.await,
            },
        }
    };
    tokio::time::timeout(timeouts.total, exchange)
        .await
        .map_err(|_| PostError::Timeout {
            target: target.to_string(),
            after: timeouts.total,
        })?
}

async fn connect(target: &HttpTarget, timeout: Duration) -> Result<TcpStream, PostError> {
    let connecting = async {
        let mut last = String::from("no address");
        for address in target.resolve().await? {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(error) => last = format!("{address}: {error}"),
            }
        }
        Err(PostError::Connect {
            target: target.to_string(),
            message: last,
        })
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| PostError::Timeout {
            target: target.to_string(),
            after: timeout,
        })?
}

fn http_error(target: &HttpTarget, error: &dyn std::error::Error) -> PostError {
    PostError::Http {
        target: target.to_string(),
        message: error.to_string(),
    }
}

/// `value` for a URL's query (RFC 3986 unreserved characters kept, the rest %XX).
pub fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char)
            }
            other => encoded.push_str(&format!("%{other:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    #[test]
    fn urls_are_checked_and_print_without_their_path() {
        let target = HttpTarget::parse("http://influx.local:8086").expect("valid");
        assert_eq!(target.path(), "/");
        assert_eq!(target.to_string(), "http://influx.local:8086");
        assert_eq!(target.host_header(), "influx.local:8086");
        let hook = HttpTarget::parse("http://127.0.0.1/services/T0/B0/secret?x=1").expect("valid");
        assert_eq!(hook.path(), "/services/T0/B0/secret?x=1");
        assert_eq!(
            format!("{hook} {hook:?}"),
            "http://127.0.0.1:80 http://127.0.0.1:80"
        );
        assert_eq!(hook.host_header(), "127.0.0.1");
        let v6 = HttpTarget::parse("http://[::1]:9000/hook").expect("valid");
        assert_eq!(v6.to_string(), "http://[::1]:9000");
        assert_eq!(v6.host_header(), "[::1]:9000");

        for (url, problem) in [
            ("https://influx:8086", "https:// is not supported"),
            ("ftp://x", "must start with http://"),
            ("http://user:pw@influx:8086", "credentials in the URL"),
            ("http://:8086", "no host"),
            ("http://influx:0", "not a port"),
            ("http://influx:99999", "not a port"),
            ("http://in flux:8086", "spaces or control"),
            ("http://influx:8086/a#b", "fragment"),
            ("http://[::1", "closed with ]"),
            ("http://exa$mple", "not a host name"),
        ] {
            let error = HttpTarget::parse(url).expect_err(url);
            assert!(error.contains(problem), "{url}: {error}");
        }
        let long = format!("http://x/{}", "a".repeat(MAX_URL_BYTES));
        assert!(HttpTarget::parse(&long).is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("telegraf"), "telegraf");
        assert_eq!(percent_encode("my db&x=1"), "my%20db%26x%3D1");
    }

    /// A one-shot HTTP server on loopback: answers `reply` and hands back what it read.
    fn one_shot_server(reply: String) -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut received = Vec::new();
            let mut buffer = [0u8; 4096];
            // Read the head, then the body its Content-Length announces.
            loop {
                let read = stream.read(&mut buffer).unwrap_or(0);
                if read == 0 {
                    break;
                }
                received.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&received).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|line| {
                            line.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|value| value.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
            }
            stream.write_all(reply.as_bytes()).expect("reply");
            String::from_utf8_lossy(&received).to_string()
        });
        (port, handle)
    }

    #[tokio::test]
    async fn posts_and_reads_the_answer() {
        let body = "{\"error\":\"bad\\nline\"}     ";
        let (port, server) = one_shot_server(format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        let target = HttpTarget::parse(&format!("http://127.0.0.1:{port}/base")).expect("valid");
        let authorization = HeaderValue::from_static("Basic dTpw");
        let answer = post(
            &target,
            "/base/write?db=x",
            "text/plain; charset=utf-8",
            Some(&authorization),
            Bytes::from_static(b"cpu usage_idle=1 1\n"),
            Timeouts {
                connect: Duration::from_secs(2),
                total: Duration::from_secs(5),
            },
        )
        .await
        .expect("an answer");
        assert_eq!(answer.status, 400);
        assert!(!answer.is_success());
        assert_eq!(answer.body, "{\"error\":\"bad\\nline\"}");
        let request = server.join().expect("server");
        assert!(
            request.starts_with("POST /base/write?db=x HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert!(
            request.contains("authorization: Basic dTpw\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with("\r\n\r\ncpu usage_idle=1 1\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_closed_port_or_a_silent_server_fails_within_the_timeouts() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            total: Duration::from_millis(800),
        };
        let target = HttpTarget::parse(&format!("http://127.0.0.1:{port}")).expect("valid");
        let error = post(&target, "/", "text/plain", None, Bytes::new(), timeouts)
            .await
            .expect_err("nothing listens");
        assert!(matches!(error, PostError::Connect { .. }), "{error}");

        // A server that accepts and never answers: the total timeout ends the wait.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let target = HttpTarget::parse(&format!("http://127.0.0.1:{port}")).expect("valid");
        let started = std::time::Instant::now();
        let error = post(&target, "/", "text/plain", None, Bytes::new(), timeouts)
            .await
            .expect_err("no answer");
        assert!(matches!(error, PostError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }
}
