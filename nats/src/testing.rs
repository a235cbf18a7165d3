//! Test support (feature `testing`): a private nats-server with JetStream on a free
//! port and a temporary store directory, which tests can stop, kill and start again
//! on the same port and store.
//!
//! The binary is `$NATS_SERVER_BIN` if set, else `nats-server` on `PATH`. If it cannot
//! be started the test fails with a message saying so: JetStream tests never skip.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long a starting server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A nats-server child process owned by a test. Killed when dropped.
pub struct NatsServer {
    bin: String,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and an empty store directory.
    pub async fn start() -> NatsServer {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let port = free_port();
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
        let mut server = NatsServer {
            bin,
            port,
            store,
            child: None,
        };
        server.start_again().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().join("jetstream")
    }

    /// The binary in use, for messages.
    pub fn binary(&self) -> &str {
        &self.bin
    }

    /// Starts the server (again) on the same port and store directory and waits until
    /// it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let log = self.store.path().join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err_file = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(err_file))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{}` ({e}). JetStream tests need nats-server: install it \
                     (e.g. `apt-get install nats-server`) or set NATS_SERVER_BIN",
                    self.bin
                )
            });
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("`{}` exited with {status} at start-up:\n{text}", self.bin);
                }
            }
            if tokio::time::Instant::now() > deadline {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "`{}` did not accept connections on port {} within {READY_TIMEOUT:?}:\n{text}",
                    self.bin, self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
            assert!(status.success(), "kill -TERM {pid} failed");
        }
        match tokio::time::timeout(READY_TIMEOUT, child.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("waiting for nats-server: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                panic!("nats-server did not stop within {READY_TIMEOUT:?}");
            }
        }
    }

    /// Kills the server (SIGKILL), as a process crash would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .unwrap_or_else(|e| panic!("cannot kill nats-server: {e}"));
        }
    }

    /// Stops the server gracefully and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|e| panic!("cannot bind a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port()
}
