//! `lb-controller validate` as a user runs it: files and directories in, exit codes and
//! `Kind/name: field: reason` lines out (DESIGN.md §3).
use std::{path::PathBuf, process::Command};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xdplb-validate-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write manifest");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn validate(args: &[&std::path::Path]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lb-controller"))
        .arg("validate")
        .args(args)
        .output()
        .expect("run lb-controller");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: pool-a, namespace: metallb-system}
spec:
  addresses: ["10.0.0.0/24", "fd00::10-fd00::20"]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2, namespace: metallb-system}
spec:
  ipAddressPools: [pool-a, not-there]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: unrelated}
"#;

#[test]
fn a_valid_directory_prints_valid_and_warns_on_stderr() {
    let dir = Dir::new("good");
    dir.file("config.yaml", GOOD);
    dir.file("notes.txt", "not a manifest, not read");
    let (code, out, err) = validate(&[&dir.0]);
    assert_eq!((code, out.as_str()), (0, "valid\n"), "stderr: {err}");
    assert!(
        err.contains("warning: L2Advertisement/l2: spec.ipAddressPools[1]: no IPAddressPool named \"not-there\""),
        "{err}"
    );
    assert!(err.contains("warning: Deployment/unrelated"), "{err}");
}

#[test]
fn each_problem_is_one_line_naming_kind_name_field_and_reason() {
    let dir = Dir::new("bad");
    let path = dir.file(
        "bad.yaml",
        r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: pool-a}
spec:
  addresses: ["10.0.0.0/24", "10.0.0.0/33"]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: pool-b}
spec:
  addresses: ["10.0.0.128-10.0.1.4"]
  colour: blue
"#,
    );
    let (code, out, _) = validate(&[&path]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "IPAddressPool/pool-b: spec.colour: unknown field `colour`, expected one of `addresses`, `autoAssign`, `avoidBuggyIPs`, `serviceAllocation`",
            "IPAddressPool/pool-a: spec.addresses[1]: 10.0.0.0/33 is not a CIDR or range",
        ]
    );
}

#[test]
fn unreadable_input_exits_2() {
    let dir = Dir::new("unreadable");
    let broken = dir.file("broken.yaml", "a: [");
    assert_eq!(validate(&[&broken]).0, 2);
    assert_eq!(validate(&[&dir.0.join("missing.yaml")]).0, 2);
}
