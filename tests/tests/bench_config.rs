//! The bench's generated nginx and haproxy configurations are accepted by the real
//! programs (`nginx -t`, `haproxy -c`). No root needed; skipped when the programs are
//! missing, except under `CI=true` (`cargo xtask setup` installs them).

use hoptrace_tests::bench::confgen::{self, NginxRole, Relay};
use std::path::Path;
use std::process::Command;

fn installed(prog: &str) -> bool {
    let found = Command::new(prog).arg("-v").output().is_ok();
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(
        found || !ci,
        "{prog} is not installed and CI=true: run `cargo xtask setup`"
    );
    if !found {
        eprintln!("skipping: {prog} is not installed (cargo xtask setup)");
    }
    found
}

fn check(prog: &str, args: &[String], dir: &Path) {
    let out = Command::new(prog).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{prog} {args:?} rejected the generated config in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hoptrace-bench-config-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn nginx_accepts_the_configs() {
    if !installed("nginx") {
        return;
    }
    let roles = [
        ("app", NginxRole::App { port: 18080 }),
        (
            "proxy",
            NginxRole::Proxy {
                listen: "127.0.0.1:14140".parse().expect("addr"),
                upstream: "127.0.0.1:14143".parse().expect("addr"),
                pinned: false,
            },
        ),
        (
            "proxy-pinned",
            NginxRole::Proxy {
                listen: "127.0.0.1:14141".parse().expect("addr"),
                upstream: "127.0.0.1:14144".parse().expect("addr"),
                pinned: true,
            },
        ),
    ];
    for (name, role) in roles {
        let dir = temp_dir(name);
        std::fs::write(dir.join("nginx.conf"), confgen::nginx_conf(&dir, role)).expect("write");
        check("nginx", &confgen::nginx_args(&dir, true), &dir);
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn haproxy_accepts_the_config() {
    if !installed("haproxy") {
        return;
    }
    let dir = temp_dir("haproxy");
    let cfg = dir.join("haproxy.cfg");
    let relays = [
        Relay {
            name: "http".into(),
            listen: "127.0.0.1:14150".parse().expect("addr"),
            target: "10.9.2.2:8080".parse().expect("addr"),
        },
        Relay {
            name: "tcp".into(),
            listen: "127.0.0.1:14151".parse().expect("addr"),
            target: "10.9.2.2:7000".parse().expect("addr"),
        },
    ];
    std::fs::write(&cfg, confgen::haproxy_conf(&relays)).expect("write");
    check("haproxy", &confgen::haproxy_args(&cfg, true), &dir);
    std::fs::remove_dir_all(&dir).ok();
}
