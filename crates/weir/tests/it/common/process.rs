//! weir as a subprocess: the `weir` binary, its logs, signals and memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `weir` binary with no `WEIR_*` variable inherited from the test environment.
pub fn weir_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A running `weir` process, killed on drop if still running.
pub struct WeirProcess {
    pub child: Child,
    /// The first listener's address, from the `listening` log line.
    pub addr: SocketAddr,
    /// The admin API's address, from the `admin API listening` log line.
    pub admin: Option<SocketAddr>,
    /// Everything written to stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl WeirProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("admin API"), path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends a signal with `kill(1)`, to this process only.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits for the exit code, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `address` of the first JSON log line whose `message` is `message`.
pub fn logged_address(stderr: &str, message: &str) -> Option<SocketAddr> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == message)
        .and_then(|v| v["address"].as_str()?.parse().ok())
}

/// Starts `weir` with `args` and extra environment; waits for its listener (and admin API,
/// unless `admin.listen` is off) to be up.
pub fn spawn_weir(args: &[&str], envs: &[(&str, &str)]) -> WeirProcess {
    let mut cmd = weir_command();
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn weir");
    let stderr = Arc::new(Mutex::new(String::new()));
    let pipe = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&stderr);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = stderr.lock().unwrap().clone();
        let addr = logged_address(&text, "listening");
        let admin = logged_address(&text, "admin API listening");
        let started = text.contains("weir started");
        if let (Some(addr), true) = (addr, started) {
            return WeirProcess {
                child,
                addr,
                admin,
                stderr,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "weir exited with {status} before listening:\n{}",
                stderr.lock().unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "weir did not log `listening` in time:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Peak resident memory (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}
