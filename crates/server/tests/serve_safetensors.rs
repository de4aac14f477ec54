//! `switchyard serve` on Hugging Face safetensors folders (Llama, Qwen2/3,
//! Qwen3-MoE, Gemma 3, DeepSeek-V2/V3 layouts, random weights written by the
//! test): every family generates through the HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_testkit::write_random_checkpoint;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((status, body))
}

const FAMILIES: [(&str, bool); 8] = [
    ("llama", true),
    ("llama3", false),
    ("qwen2", false),
    ("qwen3", true),
    ("qwen3_moe", false),
    ("gemma3_text", true),
    ("deepseek_v2", false),
    ("deepseek_v3", true),
];

#[test]
fn each_family_generates_through_serve() {
    let dir = std::env::temp_dir().join(format!("switchyard-serve-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut catalog =
        String::from("[engine]\nkv_cache_mb = 16\n\n[router]\naudit_db = \"audit.db\"\n");
    for (family, tied) in FAMILIES {
        write_random_checkpoint(&dir.join(family), family, tied).unwrap();
        catalog.push_str(&format!(
            "\n[[models]]\nid = \"tiny-{family}\"\nsource = \"{family}\"\n"
        ));
    }
    std::fs::write(dir.join("models.toml"), catalog).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(dir.join("models.toml"))
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(port, "GET", "/ready", "").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "server did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (family, _) in FAMILIES {
        let body = format!(
            r#"{{"model": "tiny-{family}", "messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 5, "temperature": 0, "ignore_eos": true}}"#
        );
        let (status, resp) = http(port, "POST", "/v1/chat/completions", &body).unwrap();
        assert_eq!(status, 200, "{family}: {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["model"], format!("tiny-{family}"));
        assert_eq!(v["usage"]["completion_tokens"], 5, "{family}: {resp}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
