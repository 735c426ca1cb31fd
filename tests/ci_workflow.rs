//! The example nightly workflow (`.github/workflows/nightly.yml`): it parses as YAML, boots a
//! matrix over both architectures, keeps the JUnit report and the serial logs, and every
//! `make` target it runs exists in the Makefile (a renamed target would otherwise break the
//! nightly run silently, since nothing else runs that file here).

use serde_norway::Value;
use std::collections::BTreeSet;
use strata_tests::repo;

fn workflow() -> Value {
    let path = repo().join(".github/workflows/nightly.yml");
    let text = std::fs::read_to_string(&path).expect("read nightly.yml");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The targets a Makefile defines: `name:` and `a b:` rule heads, never `NAME :=` or `?=`.
fn make_targets(makefile: &str) -> BTreeSet<String> {
    let mut targets = BTreeSet::new();
    for line in makefile.lines() {
        if line.starts_with(['\t', ' ', '#']) {
            continue;
        }
        let Some((head, rest)) = line.split_once(':') else {
            continue;
        };
        if rest.starts_with('=') || head.contains(['=', '$', '%']) {
            continue;
        }
        targets.extend(head.split_whitespace().map(str::to_string));
    }
    targets
}

/// `script` with each GitHub expression (`${{ matrix.arch }}`) made one word, so it stays
/// within the argument it is part of.
fn without_expressions(script: &str) -> String {
    let mut out = String::new();
    let mut rest = script;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .map_or(rest.len(), |e| start + e + 2);
        out.push_str("EXPR");
        rest = &rest[end..];
    }
    out + rest
}

/// The targets named by every `make …` command in `script` (options and VAR=value left out).
fn make_calls(script: &str) -> Vec<String> {
    let mut calls = Vec::new();
    for line in without_expressions(script).lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w != "make" {
                continue;
            }
            let named: Vec<String> = words
                .by_ref()
                .take_while(|w| !matches!(*w, "&&" | "||" | ";" | "|"))
                .filter(|w| !w.starts_with('-') && !w.contains('='))
                .map(str::to_string)
                .collect();
            // A bare `make` builds the default goal.
            calls.extend(if named.is_empty() {
                vec![".DEFAULT_GOAL".into()]
            } else {
                named
            });
        }
    }
    calls
}

fn steps(job: &Value) -> &Vec<Value> {
    job["steps"].as_sequence().expect("a job has steps")
}

#[test]
fn every_make_target_the_workflow_runs_exists() {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let targets = make_targets(&makefile);
    assert!(
        targets.contains("test") && targets.contains("boot-test"),
        "{targets:?}"
    );
    assert!(!targets.contains("ARCH"), "{targets:?}");
    let wf = workflow();
    let jobs = wf["jobs"].as_mapping().expect("jobs");
    let mut called = Vec::new();
    for job in jobs.values() {
        for step in steps(job) {
            if let Some(run) = step["run"].as_str() {
                called.extend(make_calls(run));
            }
        }
    }
    assert!(called.iter().any(|c| c == "boot-matrix"), "{called:?}");
    for c in &called {
        assert!(
            c != ".DEFAULT_GOAL" && targets.contains(c),
            "nightly.yml runs `make {c}`, which the Makefile does not define"
        );
    }
}

#[test]
fn the_matrix_covers_both_architectures_and_keeps_junit_and_serial_logs() {
    let wf = workflow();
    let job = &wf["jobs"]["boot-matrix"];
    let arches: Vec<&str> = job["strategy"]["matrix"]["arch"]
        .as_sequence()
        .expect("a matrix over arch")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    let boot = steps(job)
        .iter()
        .filter_map(|s| s["run"].as_str())
        .find(|r| r.contains("make boot-matrix"))
        .expect("a step runs the boot matrix");
    assert!(boot.contains("BOOT_ARCHES=${{ matrix.arch }}"), "{boot}");
    let upload = steps(job)
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact@"))
        })
        .expect("an upload step");
    assert_eq!(
        upload["if"].as_str(),
        Some("always()"),
        "logs of a failed run are the point"
    );
    let paths = upload["with"]["path"].as_str().expect("upload paths");
    for want in [
        "out/boot-matrix/junit.xml",
        "out/boot-matrix/*/*.boot/serial.log",
    ] {
        assert!(
            paths.lines().any(|p| p.trim() == want),
            "{want} not uploaded: {paths}"
        );
    }
    // The Makefile must honour the variable the workflow sets.
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    assert!(
        makefile.contains("BOOT_ARCHES ?="),
        "the Makefile ignores BOOT_ARCHES"
    );
}

#[test]
fn the_target_reader_tells_rules_from_variables() {
    let mk = "A := 1\nB ?= 2\nall build: x\n\tmake inner\n# c: d\nout/%: y\n.PHONY: all\n";
    let t: Vec<String> = make_targets(mk).into_iter().collect();
    assert_eq!(t, [".PHONY", "all", "build"]);
    assert_eq!(
        make_calls("make deps && make -s boot-matrix BOOT_ARCHES=${{ matrix.arch }}\nmake"),
        ["deps", "boot-matrix", ".DEFAULT_GOAL"]
    );
}
