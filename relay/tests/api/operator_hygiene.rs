//! What the `relay` binary leaves behind for an operator's tools: log lines a file or a
//! log shipper can read (no colour codes when stderr is not a terminal, one JSON object
//! per line with `LOG_FORMAT=json`), and a data directory only its user can read.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `relay serve` child on a fresh `DATA_DIR`, its stderr collected as it comes.
struct Relay {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    http: reqwest::Client,
}

impl Relay {
    /// Starts `relay serve` with only `PATH`, `DATA_DIR` and `env` in its environment
    /// (no `NO_COLOR`, no terminal) and waits for it to answer `/health`.
    async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Relay {
        // A free port found here, so start-up does not depend on reading the logs.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATA_DIR", data_dir)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let relay = Relay {
            child,
            addr,
            stderr,
            reader: Some(reader),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while relay.get("/health").await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "relay did not answer /health:\n{}",
                String::from_utf8_lossy(&relay.stderr.lock().unwrap())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay
    }

    async fn get(&self, path: &str) -> Option<u16> {
        let r = self.http.get(format!("http://{}{path}", self.addr));
        Some(r.send().await.ok()?.status().as_u16())
    }

    /// Sends a request with a wrong key (an `auth.failed` event, so the event log is
    /// written) and checks `/health`.
    async fn exercise(&self) {
        assert_eq!(self.get("/health").await, Some(200));
        let refused = self
            .http
            .post(format!("http://{}/v1/messages", self.addr))
            .header("x-api-key", "sk-relay-wrong")
            .header("content-type", "application/json")
            .body(r#"{"model":"claude-sonnet-4-6","max_tokens":8,"messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    }

    /// SIGTERM; returns everything the relay wrote to stderr once it has exited.
    fn stop(mut self) -> Vec<u8> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "relay did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.reader.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.stderr.lock().unwrap())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("data"), &[]).await;
    relay.exercise().await;
    let stderr = relay.stop();
    let text = String::from_utf8_lossy(&stderr);
    assert!(text.contains("relay listening"), "{text}");
    assert!(
        !stderr.contains(&0x1b),
        "escape sequences in piped logs:\n{text}"
    );
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    // A configured password: the generated one is announced once in plain text.
    let relay = Relay::start(
        &tmp.path().join("data"),
        &[
            ("LOG_FORMAT", "json"),
            ("DEFAULT_ADMIN_PASSWORD", "admin-password-for-tests"),
        ],
    )
    .await;
    relay.exercise().await;
    let stderr = String::from_utf8(relay.stop()).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() >= 2, "{stderr}");
    for v in &lines {
        assert!(v.is_object(), "{v}");
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        assert!(v["message"].is_string(), "{v}");
    }
    // Event fields sit at the top level, where a shipper indexes them.
    let listening = lines
        .iter()
        .find(|v| v["message"] == "relay listening")
        .unwrap();
    assert!(listening["addr"].as_str().is_some_and(|a| !a.is_empty()));
    assert!(lines
        .iter()
        .any(|v| v["message"] == "shutdown requested; draining"));
}

/// Every directory and file below `dir` (and `dir` itself).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let children = std::fs::read_dir(&out[i]).unwrap();
            out.extend(children.map(|e| e.unwrap().path()));
        }
        i += 1;
    }
    out
}

/// Panics naming each path below `dir` that its group or others may read, write or enter.
fn assert_private(dir: &Path) {
    let open: Vec<String> = tree(dir)
        .iter()
        .filter_map(|p| {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            (mode & 0o077 != 0).then(|| format!("{:o} {}", mode, p.display()))
        })
        .collect();
    assert!(open.is_empty(), "readable by group or others:\n{open:#?}");
}

#[tokio::test]
async fn data_files_and_directories_are_private_after_a_fresh_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nested").join("data");
    let relay = Relay::start(&data, &[]).await;
    relay.exercise().await;
    // While running: the databases and their -wal/-shm files, the spool, the generated
    // encryption key, JWT secret and first admin password.
    let names: Vec<String> = tree(&data)
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_owned()))
        .collect();
    for expected in [
        "relay.db",
        "relay.db-wal",
        "events.db",
        "events.db-wal",
        "spool.db",
        "encryption.key",
        "initial-admin-password",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} in {names:?}"
        );
    }
    assert_private(&data);
    assert_private(&tmp.path().join("nested"));
    relay.stop();
    assert_private(&data);
}

/// The section types of an ELF64 little-endian file (`sh_type` of every section header).
fn elf_section_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let shoff = usize::try_from(u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap())).unwrap();
    let (entsize, count) = (u16_at(0x3a), u16_at(0x3c));
    (0..count)
        .map(|i| {
            let at = shoff + i * entsize + 4;
            u32::from_le_bytes(elf[at..at + 4].try_into().unwrap())
        })
        .collect()
}

/// The binary packs its relative relocations (`relay/build.rs`): without it the loader
/// reads a 1.6 MiB RELA table at every start, which stays in the idle relay's memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_packs_its_relative_relocations() {
    const SHT_RELR: u32 = 19;
    let elf = std::fs::read(env!("CARGO_BIN_EXE_relay")).unwrap();
    let types = elf_section_types(&elf);
    assert!(types.len() > 10, "section headers not read: {types:?}");
    assert!(
        types.contains(&SHT_RELR),
        "no .relr.dyn section: the linker did not pack relative relocations \
         (needs GNU ld ≥ 2.38 or lld ≥ 15, and glibc ≥ 2.36)"
    );
}
