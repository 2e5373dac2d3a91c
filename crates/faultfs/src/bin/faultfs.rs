//! `faultfs BACKING MOUNTPOINT [--control SOCKET] [--no-sync-backing] [--page-cache]
//!          [--refuse-direct-io] [--direct-io-alignment N]`
//!
//! Mounts a faultfs and serves its control channel on a Unix socket (default
//! `MOUNTPOINT.control`), one command per line, one reply line each (`ok …` or `error …`):
//!
//! | command | effect |
//! |---|---|
//! | `ops` | operation counter (crash points) |
//! | `stats` | counters since the mount |
//! | `unsynced` | unsynced sectors, files, directory entries |
//! | `crash SEED MODE` | power loss + reboot; MODE: random, drop, keep, torn512, torn4096, garbage, zeros |
//! | `power-off` | every operation fails with EIO until `crash` |
//! | `power-loss-at OP` | power is lost at operation OP (absolute) |
//! | `fail-sync N` | the N-th sync from now fails with EIO |
//! | `enospc N` | the N-th write from now fails with ENOSPC |
//! | `clear` | no planned faults |
//! | `unmount` | unmount and exit |
//!
//! Example: `printf 'crash 7 torn4096\n' | socat - UNIX-CONNECT:/mnt/x.control`.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("faultfs: FUSE is only supported on Linux here");
    std::process::ExitCode::from(2)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::process::ExitCode;

    use faultfs::{Control, CrashMode, FaultFs, FaultPlan, Options};

    const USAGE: &str = "usage: faultfs BACKING MOUNTPOINT [--control SOCKET] [--no-sync-backing] \
                         [--page-cache] [--refuse-direct-io] [--direct-io-alignment N]";

    pub fn main() -> ExitCode {
        let mut positional = Vec::new();
        let mut options = Options::default();
        let mut control_path: Option<PathBuf> = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--control" => control_path = args.next().map(PathBuf::from),
                "--no-sync-backing" => options.sync_backing = false,
                "--page-cache" => options.kernel_page_cache = true,
                "--refuse-direct-io" => options.refuse_direct_io = true,
                "--direct-io-alignment" => match args.next().and_then(|v| v.parse().ok()) {
                    Some(v) => options.direct_io_alignment = v,
                    None => {
                        eprintln!("{USAGE}");
                        return ExitCode::from(2);
                    }
                },
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return ExitCode::SUCCESS;
                }
                _ if !arg.starts_with("--") => positional.push(PathBuf::from(arg)),
                _ => {
                    eprintln!("bad argument {arg:?}\n{USAGE}");
                    return ExitCode::from(2);
                }
            }
        }
        let [backing, mountpoint] = positional.as_slice() else {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        };
        let control_path = control_path.unwrap_or_else(|| {
            let mut p = mountpoint.clone().into_os_string();
            p.push(".control");
            PathBuf::from(p)
        });
        let fs = match FaultFs::mount(backing, mountpoint, options) {
            Ok(fs) => fs,
            Err(e) => {
                eprintln!("faultfs: mount failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        let _ = std::fs::remove_file(&control_path);
        let listener = match UnixListener::bind(&control_path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("faultfs: cannot listen on {}: {e}", control_path.display());
                return ExitCode::FAILURE;
            }
        };
        eprintln!(
            "faultfs: {} mounted on {}; control socket {}",
            backing.display(),
            mountpoint.display(),
            control_path.display()
        );
        let control = fs.control();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if serve(&control, stream) {
                break;
            }
        }
        let _ = std::fs::remove_file(&control_path);
        match fs.unmount() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("faultfs: unmount failed: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// Serves one connection; returns true when asked to unmount.
    fn serve(control: &Control, stream: UnixStream) -> bool {
        let Ok(mut out) = stream.try_clone() else {
            return false;
        };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return false };
            let words: Vec<&str> = line.split_whitespace().collect();
            let reply = command(control, &words);
            let quit = words.first() == Some(&"unmount");
            if writeln!(out, "{reply}").is_err() || quit {
                return quit;
            }
        }
        false
    }

    fn number(word: Option<&&str>) -> Result<u64, String> {
        word.and_then(|w| w.parse().ok())
            .ok_or_else(|| "error expected a number".to_string())
    }

    fn command(control: &Control, words: &[&str]) -> String {
        let result: Result<String, String> = match words {
            ["ops"] => Ok(control.op_count().to_string()),
            ["stats"] => Ok(format!("{:?}", control.stats())),
            ["unsynced"] => {
                let u = control.unsynced();
                Ok(format!(
                    "sectors={} files={} entries={}",
                    u.sectors, u.files, u.entries
                ))
            }
            ["crash", seed, mode] => match (seed.parse::<u64>(), CrashMode::parse(mode)) {
                (Ok(seed), Some(mode)) => control
                    .crash(seed, mode)
                    .map(|r| format!("{r:?}"))
                    .map_err(|e| format!("error {e}")),
                _ => Err(
                    "error usage: crash SEED random|drop|keep|torn512|torn4096|garbage|zeros"
                        .into(),
                ),
            },
            ["power-off"] => {
                control.power_off();
                Ok(String::new())
            }
            ["power-loss-at", _] => number(words.get(1)).map(|n| {
                control.power_loss_at(n);
                String::new()
            }),
            ["fail-sync", _] => number(words.get(1)).map(|n| {
                control.fail_nth_sync(n);
                String::new()
            }),
            ["enospc", _] => number(words.get(1)).map(|n| {
                control.no_space_at_nth_write(n);
                String::new()
            }),
            ["clear"] => {
                control.set_plan(FaultPlan::default());
                Ok(String::new())
            }
            ["unmount"] => Ok(String::new()),
            _ => Err(format!("error unknown command {:?}", words.join(" "))),
        };
        match result {
            Ok(s) if s.is_empty() => "ok".to_string(),
            Ok(s) => format!("ok {s}"),
            Err(e) => e,
        }
    }
}
