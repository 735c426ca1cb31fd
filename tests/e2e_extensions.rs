//! Real extensions end to end, against a real registry (Debian's
//! docker-registry on 127.0.0.1, started here and stopped on drop):
//! `strata ext pack` pushes a Talos extension; a profile pulls it (by tag,
//! then by digest) beside an extension with a service config, one with a
//! kernel module and a sysext; the layered and the flattened builds both
//! boot, and the guest reports every extension and loads the module by name.
//! A corrupted blob is refused with its digest named; `--offline` builds
//! from the cache alone. With `boot_test.services: true` the guest starts
//! every extension service once in its container root: two good ones pass,
//! and the repository's `hello-service`, whose `#!/bin/sh` entrypoint has no
//! shell in its container root, fails the boot with that reason.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_tests::*;

/// A docker-registry process on a free loopback port; killed on drop.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Option<Registry> {
        if !require_tool("docker-registry") {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Registry { child, addr, dir })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str], cache: &Path) -> (bool, String, String) {
    let o = strata(args, cache);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A copy of the demo root that says it is version 1.11.0, so the Talos rules after the
/// usr-merge (1.10) apply: the module extension ships under `/usr/lib/modules`. The profile's
/// `os.version` must equal the root's `VERSION_ID`.
fn talos_1_11_root(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs-1.11");
    if !root.exists() {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(repo().join("build/rootfs-amd64"))
            .arg(&root)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot copy the demo root");
        let release = root.join("etc/os-release");
        let text = std::fs::read_to_string(&release).unwrap();
        std::fs::remove_file(&release).unwrap();
        std::fs::write(&release, text.replace("1.0.0", "1.11.0")).unwrap();
    }
    root
}

/// A profile using the pushed image (`image`), the repo's service extension,
/// the kernel-module extension and the sysext.
fn profile(
    dir: &Path,
    name: &str,
    image: &str,
    registry: &str,
    sysext: &Path,
    flatten: bool,
) -> PathBuf {
    let r = repo();
    let root = talos_1_11_root(dir);
    let text = format!(
        "name: {name}\narch: amd64\nplatform: metal\nflatten: {flatten}\nos:\n  id: strata\n  version: 1.11.0\nkernel:\n  deb: {k}\nrootfs:\n  dir: {root}\nregistries:\n  insecure: [\"{registry}\"]\nextensions:\n  - image: {image}\n  - dir: {svc}\n  - dir: {module}\n  - sysext: {sysext}\n  - dir: {motd}\n    enabled: false\noutputs: [raw]\n",
        k = kernel_deb("amd64").display(),
        root = root.display(),
        svc = r.join("examples/extensions/hello-service").display(),
        module = r.join("build/ext-dummy-amd64").display(),
        sysext = sysext.display(),
        motd = r.join("examples/extensions/motd").display(),
    );
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn boots_with_every_layer(raw: &Path, cache: &Path) -> serde_json::Value {
    let r = boot_passes(raw, &[], cache);
    let names = layer_names(&r);
    for want in ["hello", "hello-service", "dummy-module", "tools"] {
        assert!(names.contains(&want), "{want} not reported: {names:?}");
    }
    let motd = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "layer" && e["name"] == "motd")
        .expect("motd reported");
    assert!(
        motd["disabled"] == true && motd["mounted"] == false && motd["visible"] == true,
        "enabled: false must ship, not activate: {motd}"
    );
    let loaded = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "ext_module" && e["name"] == "dummy" && e["loaded"] == true);
    assert!(
        loaded,
        "the guest did not load the extension's module by name: {r}"
    );
    r
}

#[test]
fn extensions_from_a_registry_boot_layered_and_flattened() {
    if !have_inputs("amd64") || !require_input(&repo().join("build/ext-dummy-amd64/manifest.yaml"))
    {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = format!("{}/ext/hello:1.0.0", reg.addr);

    // Push with strata itself: no Docker.
    let (ok, out, err) = run(
        &[
            "ext",
            "pack",
            "examples/extensions/hello",
            "--tag",
            "1.0.0",
            "--push",
            &image,
            "--insecure",
            &reg.addr,
        ],
        &cache,
    );
    assert!(ok, "push failed: {err}");
    let digest = out
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .expect("pack prints ref@digest");
    assert!(digest.starts_with("sha256:"), "{out}");
    let sysext = work.path().join("tools.raw");
    let (ok, _, err) = run(
        &[
            "ext",
            "pack",
            "examples/sysext/tools",
            "--sysext",
            sysext.to_str().unwrap(),
            "--extension-version",
            "2.0",
        ],
        &cache,
    );
    assert!(ok, "{err}");

    // Layered, pulled by tag.
    let p = profile(work.path(), "layered", &image, &reg.addr, &sysext, false);
    let out_l = work.path().join("out-layered");
    let (ok, _, err) = run(
        &[
            "build",
            p.to_str().unwrap(),
            "--out",
            out_l.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(ok, "layered build failed: {err}");
    boots_with_every_layer(&out_l.join("metal-amd64.raw"), &cache);

    // Flattened, pulled by digest.
    let by_digest = format!("{}/ext/hello@{digest}", reg.addr);
    let p = profile(work.path(), "flat", &by_digest, &reg.addr, &sysext, true);
    let out_f = work.path().join("out-flat");
    let (ok, _, err) = run(
        &[
            "build",
            p.to_str().unwrap(),
            "--out",
            out_f.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(ok, "flattened build failed: {err}");
    let r = boots_with_every_layer(&out_f.join("metal-amd64.raw"), &cache);
    let flat = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "layer" && e["flattened"] == true)
        .count();
    assert!(
        flat >= 4,
        "the guest did not report the flattened extensions: {r}"
    );

    // Offline: the cache alone is enough; an empty cache names what is missing.
    let (ok, _, err) = run(
        &[
            "build",
            p.to_str().unwrap(),
            "--offline",
            "--out",
            work.path().join("out-offline").to_str().unwrap(),
        ],
        &cache,
    );
    assert!(ok, "offline build from a warm cache failed: {err}");
    let (ok, _, err) = run(
        &[
            "build",
            p.to_str().unwrap(),
            "--offline",
            "--out",
            work.path().join("out-cold").to_str().unwrap(),
        ],
        &work.path().join("empty-cache"),
    );
    assert!(
        !ok && err.contains("ext/hello"),
        "an offline build with an empty cache must name the missing image:\n{err}"
    );

    // A corrupted blob in the registry is refused, digest named, nothing written.
    let blobs = reg.dir.path().join("data/docker/registry/v2/blobs/sha256");
    let mut corrupted = 0;
    for prefix in std::fs::read_dir(&blobs).unwrap() {
        for blob in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let data = blob.unwrap().path().join("data");
            let bytes = std::fs::read(&data).unwrap();
            if bytes.first() == Some(&0x1f) {
                // The gzip'd layer: flip a byte in the middle.
                let mut b = bytes.clone();
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                std::fs::write(&data, b).unwrap();
                corrupted += 1;
            }
        }
    }
    assert!(corrupted > 0, "no layer blob found to corrupt");
    let out_c = work.path().join("out-corrupt");
    let (ok, _, err) = run(
        &[
            "build",
            p.to_str().unwrap(),
            "--out",
            out_c.to_str().unwrap(),
        ],
        &work.path().join("fresh-cache"),
    );
    assert!(
        !ok && err.contains("sha256:"),
        "a corrupted blob must be refused with its digest:\n{err}"
    );
    assert!(!out_c.exists(), "a refused build wrote output");
}

/// A Talos extension with two services made of the demo root's static busybox: `sleeper`
/// (`restart: always`, busybox as `/bin/sleep 300`) and `oneshot` (`restart: never`, busybox
/// as `/bin/true`, with an environment).
fn busybox_services(dir: &Path) -> PathBuf {
    let ext = dir.join("good-services");
    let rootfs = ext.join("rootfs/usr/local");
    let busybox = repo().join("build/rootfs-amd64/bin/busybox");
    for (name, program) in [("sleeper", "sleep"), ("oneshot", "true")] {
        let bin = rootfs.join(format!("lib/containers/{name}/bin"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(&busybox, bin.join(program)).unwrap();
    }
    std::fs::create_dir_all(rootfs.join("etc/containers")).unwrap();
    let depends = "depends:\n  - network:\n      - addresses\n";
    std::fs::write(
        rootfs.join("etc/containers/sleeper.yaml"),
        format!("name: sleeper\ncontainer:\n  entrypoint: /bin/sleep\n  args: [\"300\"]\n{depends}restart: always\n"),
    )
    .unwrap();
    std::fs::write(
        rootfs.join("etc/containers/oneshot.yaml"),
        format!("name: oneshot\ncontainer:\n  entrypoint: ./bin/true\n  environment:\n    - GREETING=hello\n{depends}restart: never\n"),
    )
    .unwrap();
    std::fs::write(
        ext.join("manifest.yaml"),
        "version: v1alpha1\nmetadata:\n  name: good-services\n  version: 1.0.0\n  author: strata tests\n  description: Two services made of busybox.\n  compatibility:\n    talos:\n      version: \">= 1.0.0\"\n",
    )
    .unwrap();
    ext
}

#[test]
fn extension_services_start_in_their_container_root_and_a_broken_one_fails_the_boot() {
    if !have_inputs("amd64") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = shared_cache();
    let good = busybox_services(work.path());
    let p = work.path().join("services.yaml");
    std::fs::write(
        &p,
        format!(
            "name: services\narch: amd64\nplatform: metal\nos:\n  id: strata\n  version: 1.0.0\nkernel:\n  deb: {}\nrootfs:\n  dir: {}\noutputs: [raw]\nboot_test:\n  services: true\nextensions:\n  - dir: {}\n  - dir: {}\n",
            kernel_deb("amd64").display(),
            repo().join("build/rootfs-amd64").display(),
            good.display(),
            repo().join("examples/extensions/hello-service").display(),
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let o = strata(
        &["build", p.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &cache,
    );
    assert!(o.status.success(), "build failed:\n{}", text(&o));
    let manifest_file = out.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_file).unwrap()).unwrap();
    assert_eq!(
        manifest["builds"][0]["services"],
        serde_json::json!(["hello-service", "oneshot", "sleeper"]),
        "the build must record every service the guest is to report"
    );
    // The runner requires a report of each: one the guest never reports fails the boot.
    manifest["builds"][0]["services"]
        .as_array_mut()
        .unwrap()
        .push("ghost".into());
    std::fs::write(&manifest_file, manifest.to_string()).unwrap();
    let raw = out.join("metal-amd64.raw");
    let o = strata(
        &["boot", "--json", "--timeout", "400", raw.to_str().unwrap()],
        &cache,
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("no JSON from the boot: {}", text(&o)));
    let service = |name: &str| -> serde_json::Value {
        r["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "service" && e["name"] == name)
            .unwrap_or_else(|| panic!("service {name} not reported: {r}"))
            .clone()
    };
    let sleeper = service("sleeper");
    assert!(
        sleeper["ok"] == true && sleeper["executed"] == true && sleeper["alive"] == true,
        "restart: always must still run: {sleeper}"
    );
    let oneshot = service("oneshot");
    assert!(
        oneshot["ok"] == true && oneshot["exit_status"] == 0,
        "restart: never must exit 0: {oneshot}"
    );
    let broken = service("hello-service");
    assert!(
        broken["ok"] == false && broken["executed"] == false,
        "{broken}"
    );
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        !o.status.success()
            && r["pass"] == false
            && reason.contains("extension service \"hello-service\"")
            && reason.contains("interpreter /bin/sh is missing")
            && reason.contains("the guest did not report extension service \"ghost\""),
        "a service that cannot execute must fail the boot, naming why: {reason}\n{}",
        text(&o)
    );
}
