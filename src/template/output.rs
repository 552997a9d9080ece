//! Where a render goes: the destination file, written atomically and only
//! when its content changes, and the command run after it changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How much of a failed command's output is kept for the log and `/status`.
const OUTPUT_TAIL_BYTES: usize = 2048;

/// Writes `text` to `destination` (atomically, with mode `perms`) unless the
/// file already holds exactly that. With `backup`, the previous content is
/// first copied to `<destination>.bak`. Returns whether the file changed.
pub fn write_if_changed(
    destination: &Path,
    text: &str,
    perms: u32,
    backup: bool,
) -> std::io::Result<bool> {
    let previous = match std::fs::read(destination) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if previous.as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    if let (true, Some(previous)) = (backup, &previous) {
        let mut bak = destination.as_os_str().to_owned();
        bak.push(".bak");
        std::fs::write(PathBuf::from(bak), previous)?;
    }
    crate::atomic_file::write(destination, text.as_bytes(), Some(perms))?;
    Ok(true)
}

/// How a template's command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Success,
    /// Non-zero exit or killed by a signal, with the end of its output.
    Failed {
        status: String,
        output: String,
    },
    TimedOut,
    /// `sh` could not be started.
    NotStarted(String),
}

impl CommandOutcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::TimedOut => "timeout",
            Self::Failed { .. } | Self::NotStarted(_) => "failure",
        }
    }
}

impl std::fmt::Display for CommandOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Success => f.write_str("exited 0"),
            Self::Failed { status, output } if output.is_empty() => f.write_str(status),
            Self::Failed { status, output } => write!(f, "{status}: {output}"),
            Self::TimedOut => f.write_str("timed out and was killed"),
            Self::NotStarted(e) => write!(f, "could not start: {e}"),
        }
    }
}

/// Runs `command` with `sh -c`, as consul-template does, killing it (and
/// reporting a timeout) when it runs past `timeout`. stdout and stderr are
/// collected together and kept (the last 2 KiB) only when it fails.
pub async fn run_command(command: &str, timeout: Duration) -> CommandOutcome {
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return CommandOutcome::NotStarted(e.to_string()),
    };
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::time::timeout(timeout, async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        out.extend_from_slice(&err);
        (child.wait().await, out)
    })
    .await;
    match finished {
        Err(_) => CommandOutcome::TimedOut,
        Ok((Err(e), _)) => CommandOutcome::NotStarted(e.to_string()),
        Ok((Ok(status), _)) if status.success() => CommandOutcome::Success,
        Ok((Ok(status), output)) => {
            let start = output.len().saturating_sub(OUTPUT_TAIL_BYTES);
            CommandOutcome::Failed {
                status: status.to_string(),
                output: String::from_utf8_lossy(&output[start..]).trim().to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_only_changes_with_mode_and_backup() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/out.conf");
        assert!(write_if_changed(&dest, "one\n", 0o600, true).unwrap());
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "one\n");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(!write_if_changed(&dest, "one\n", 0o600, true).unwrap());
        assert!(write_if_changed(&dest, "two\n", 0o600, true).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/out.conf.bak")).unwrap(),
            "one\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn commands_report_exit_output_and_timeout() {
        assert_eq!(
            run_command("true", Duration::from_secs(5)).await,
            CommandOutcome::Success
        );
        let failed = run_command("echo broken >&2; exit 3", Duration::from_secs(5)).await;
        assert_eq!(failed.label(), "failure");
        let text = failed.to_string();
        assert!(text.contains("3") && text.contains("broken"), "{text}");
        assert_eq!(
            run_command("sleep 5", Duration::from_millis(100)).await,
            CommandOutcome::TimedOut
        );
    }
}
