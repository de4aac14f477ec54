//! `--features otel`: a served request becomes one trace at an OTLP/HTTP
//! collector (a stand-in here, speaking OTLP's JSON encoding): the root
//! `request` span with the request's id, and its phases as children
//! (validate, queue, prefill, decode, stream), each inside the root.
#![cfg(feature = "otel")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A collector that answers 200 to every POST and passes each body on.
fn collector() -> (u16, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || serve_otlp(conn, tx));
        }
    });
    (port, rx)
}

fn serve_otlp(conn: TcpStream, tx: mpsc::Sender<Vec<u8>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let _ = tx.send(body);
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        );
    }
}

fn http(port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let (method, extra) = if body.is_empty() {
        ("GET", String::new())
    } else {
        ("POST", "x-request-id: trace-me-1\r\n".to_string())
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out))
}

#[test]
fn a_request_becomes_a_trace_with_its_phases() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "run scripts/fetch-models first");
    let dir = std::env::temp_dir().join(format!("switchyard-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let catalog = dir.join("models.toml");
    std::fs::write(
        &catalog,
        format!(
            "[engine]\nkv_cache_mb = 32\n[router]\naudit_db = \"audit.db\"\n[[models]]\nid = \"smol\"\nsource = \"{}\"\n",
            model.display()
        ),
    )
    .unwrap();
    let (otlp, bodies) = collector();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(&catalog)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp}"),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(port, "/ready", "").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = http(
        port,
        "/v1/chat/completions",
        r#"{"model": "smol", "max_tokens": 4, "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    // SIGTERM: the drain, then the exporter's flush at exit.
    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    let mut spans: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spans.iter().any(|s| s["name"] == "request") {
        let left = deadline.saturating_duration_since(Instant::now());
        let body = bodies
            .recv_timeout(left)
            .expect("no trace reached the collector");
        let v: Value = serde_json::from_slice(&body).expect("OTLP JSON");
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                spans.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    let root = spans.iter().find(|s| s["name"] == "request").unwrap();
    let attr = |s: &Value, key: &str| {
        s["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
    };
    assert_eq!(
        attr(root, "switchyard.request_id").unwrap()["stringValue"],
        "trace-me-1"
    );
    assert_eq!(
        attr(root, "gen_ai.response.model").unwrap()["stringValue"],
        "smol"
    );
    let nanos = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u128>().unwrap();
    let children: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parentSpanId"] == root["spanId"] && s["traceId"] == root["traceId"])
        .collect();
    let names: Vec<&str> = children
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for phase in ["validate", "queue", "prefill", "decode", "stream"] {
        assert!(names.contains(&phase), "{phase} missing: {names:?}");
    }
    for c in &children {
        assert!(nanos(c, "startTimeUnixNano") >= nanos(root, "startTimeUnixNano"));
        assert!(nanos(c, "endTimeUnixNano") <= nanos(root, "endTimeUnixNano"));
        assert!(nanos(c, "startTimeUnixNano") <= nanos(c, "endTimeUnixNano"));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
