//! Talos extension service specs (`/usr/local/etc/containers/*.yaml`), checked against the
//! schema of `pkg/machinery/extensions/services` and what the runtime does with them.
//!
//! Talos reads every `*.yaml` file there once at boot; a spec that fails to parse or validate
//! is only logged and skipped, so a broken service shows up as a service that never starts.
//! This module reports, per file:
//! - errors for what Talos rejects: an invalid `name` (`^[-_a-z0-9]+$`), an empty
//!   `container.entrypoint`, a missing or unknown `restart`, a `depends` item with zero or
//!   several of `service`/`path`/`network`/`time`/`configuration`, a relative dependency path,
//!   unknown network states, values of the wrong YAML type, duplicate service names, leftover
//!   `{{ … }}` template placeholders, and (with the extension's rootfs at hand) an entrypoint
//!   or container rootfs (`/usr/local/lib/containers/<name>`) that is not shipped;
//! - warnings for what Talos silently ignores or tolerates: unknown keys, a top-level `mounts:`
//!   (it belongs under `container:`), `restart` in unusual case, mount entries listed twice,
//!   unknown mount options or types, file names that differ from the service name,
//!   the deprecated `environmentFile`.
//!
//! Not checked: whether `ext-*` dependencies exist (they may come from another extension)
//! and symlink targets of the entrypoint.

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::{Mapping, Value};

use super::paths::under;
use super::yaml::{
    find_placeholders, first_document, placeholder_finding, scalar_or_type, type_name, unknown_keys,
};
use crate::extension::findings::Finding;
use crate::fs::tree::{EntryKind, Tree};

/// Where Talos expects a service's container rootfs: `<CONTAINERS_ROOT>/<name>`.
pub const CONTAINERS_ROOT: &str = "/usr/local/lib/containers";

/// The `PATH` containerd gives a container without one (`oci.WithDefaultPathEnv`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Accepted `restart` values in Talos' spelling; matching ignores case.
const RESTART_KINDS: &[&str] = &["always", "never", "untilSuccess"];

/// Accepted `depends[].network` values (`nethelpers.Status`).
const NETWORK_STATES: &[&str] = &["addresses", "connectivity", "hostname", "etcfiles"];

/// Mount types runc/containerd know.
const MOUNT_TYPES: &[&str] = &[
    "bind", "rbind", "tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay",
    "none", "ramfs",
];

/// Mount options runc understands (flags and propagation); `key=value` data options
/// (e.g. `mode=0755`, `size=64m`) are always accepted.
const MOUNT_OPTIONS: &[&str] = &[
    "bind",
    "rbind",
    "ro",
    "rw",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "unbindable",
    "runbindable",
    "silent",
    "loud",
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnoatime",
    "ratime",
    "rrelatime",
    "rnorelatime",
    "rstrictatime",
    "rnostrictatime",
    "rnodiratime",
    "rdiratime",
    "rnosymfollow",
    "rsymfollow",
    "nosymfollow",
    "symfollow",
    "idmap",
    "ridmap",
    "tmpcopyup",
];

/// `container.security.rootfsPropagation` values.
const PROPAGATIONS: &[&str] = &[
    "shared", "rshared", "slave", "rslave", "private", "rprivate",
];

/// One service spec file to check.
#[derive(Debug, Clone)]
pub struct ServiceFile {
    /// How findings name the file (`rootfs/usr/local/etc/containers/x.yaml` or `x.yaml`).
    pub label: String,
    /// The file name (`x.yaml`), compared with the service name.
    pub file_name: String,
    /// The file's contents.
    pub text: String,
}

/// What a spec says that later checks need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `name` (may be invalid; the findings say so).
    pub name: String,
    /// `container.entrypoint`, when set.
    pub entrypoint: Option<String>,
    /// `container.mounts` with both source and destination, in order.
    pub mounts: Vec<(String, String)>,
    /// The last `PATH=` of `container.environment`.
    pub path_env: Option<String>,
}

/// Checks several spec files of one extension, including duplicate names and, with the
/// extension's rootfs, the container rootfs and entrypoint of each service.
pub fn check_services(files: &[ServiceFile], rootfs: Option<&Tree>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut sorted: Vec<&ServiceFile> = files.iter().collect();
    // Talos reads the directory in name order; the first of two equal names wins.
    sorted.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    for file in sorted {
        let (spec, findings) = check_service(file);
        out.extend(findings);
        let Some(spec) = spec else { continue };
        if spec.name.is_empty() {
            continue;
        }
        if let Some(first) = seen.get(&spec.name) {
            out.push(Finding::error(
                file.label.clone(),
                "service.duplicate-name",
                format!(
                    "service name {:?} is already used by {first}; Talos skips this one",
                    spec.name
                ),
                "give every service of the extension a distinct name",
            ));
            continue;
        }
        seen.insert(spec.name.clone(), file.label.clone());
        if let Some(tree) = rootfs {
            out.extend(check_entrypoint(&spec, &file.label, tree));
        }
    }
    out
}

/// Checks one spec file on its own. Returns what could be read of it (`None` when it is not
/// a service spec at all) and the findings.
pub fn check_service(file: &ServiceFile) -> (Option<ServiceSpec>, Vec<Finding>) {
    let label = file.label.as_str();
    let mut out = Vec::new();
    let placeholders = find_placeholders(&file.text, false);
    if !placeholders.is_empty() {
        out.push(placeholder_finding(
            label,
            "service.template-placeholder",
            &placeholders,
        ));
    }
    let top = match first_document(&file.text) {
        Ok((Value::Mapping(m), _)) => m,
        Ok((Value::Null, _)) => Mapping::new(),
        Ok((other, _)) => {
            out.push(Finding::error(
                label,
                "service.parse",
                format!("the spec is {}, not a mapping", type_name(&other)),
                "write the spec as a mapping with name, container, depends, restart",
            ));
            return (None, out);
        }
        Err(e) => {
            out.push(Finding::error(
                label,
                "service.parse",
                format!("not valid YAML: {e}; Talos logs and skips this service"),
                "fix the YAML syntax",
            ));
            return (None, out);
        }
    };
    if let Some(kind) = config_document_kind(&top) {
        out.push(Finding::error(
            label,
            "service.not-a-service",
            format!(
                "this is a Talos machine-config document (kind: {kind}), not an extension \
                 service spec; Talos would fail to validate it as a service"
            ),
            "pass it in the machine configuration instead of shipping it in \
             /usr/local/etc/containers",
        ));
        return (None, out);
    }
    let spec = check_spec(&top, file, &mut out);
    (Some(spec), out)
}

/// `Some(kind)` when the mapping is a machine-config document (`apiVersion` + `kind`).
fn config_document_kind(top: &Mapping) -> Option<String> {
    if top.get("apiVersion").is_none() && top.get("kind").is_none() {
        return None;
    }
    Some(
        top.get("kind")
            .map(scalar_or_type)
            .unwrap_or_else(|| "?".into()),
    )
}

fn check_spec(top: &Mapping, file: &ServiceFile, out: &mut Vec<Finding>) -> ServiceSpec {
    let label = file.label.as_str();
    let known = ["name", "container", "depends", "restart", "logToConsole"];
    for key in top.keys() {
        if scalar_or_type(key) == "mounts" {
            out.push(Finding::warning(
                label,
                "service.misplaced-mounts",
                "top-level `mounts:` is silently ignored by Talos: mounts belong under \
                 `container:`",
                "indent the mounts list under `container:`",
            ));
        }
    }
    let unknown: Mapping = top
        .iter()
        .filter(|(k, _)| scalar_or_type(k) != "mounts")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    unknown_keys(&unknown, &known, label, "", "service.unknown-key", out);
    let mut spec = ServiceSpec {
        name: check_name(top.get("name"), file, out),
        ..ServiceSpec::default()
    };
    check_container(top.get("container"), label, &mut spec, out);
    check_depends(top.get("depends"), label, &spec.name, out);
    check_restart(top.get("restart"), label, out);
    expect_bool(top.get("logToConsole"), label, "logToConsole", out);
    spec
}

fn check_name(value: Option<&Value>, file: &ServiceFile, out: &mut Vec<Finding>) -> String {
    let label = file.label.as_str();
    let name = match value {
        None | Some(Value::Null) => String::new(),
        Some(v @ (Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_))) => {
            out.push(type_finding(label, "name", v, "a string"));
            return String::new();
        }
        Some(v) => scalar_or_type(v),
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        out.push(Finding::error(
            label,
            "service.name",
            format!("name {name:?} is invalid: Talos requires ^[-_a-z0-9]+$"),
            "use lowercase letters, digits, - and _ only",
        ));
        return name;
    }
    let stem = file
        .file_name
        .strip_suffix(".yaml")
        .unwrap_or(&file.file_name);
    if stem != name {
        out.push(Finding::warning(
            label,
            "service.file-name",
            format!(
                "file {:?} holds service {name:?}; Talos does not care, but people looking \
                 for ext-{name} will not find it",
                file.file_name
            ),
            format!("name the file {name}.yaml"),
        ));
    }
    name
}

fn check_container(
    value: Option<&Value>,
    label: &str,
    spec: &mut ServiceSpec,
    out: &mut Vec<Finding>,
) {
    let empty = Mapping::new();
    let container = match value {
        None | Some(Value::Null) => &empty,
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            out.push(type_finding(label, "container", other, "a mapping"));
            &empty
        }
    };
    let known = [
        "entrypoint",
        "environment",
        "environmentFile",
        "args",
        "mounts",
        "security",
    ];
    unknown_keys(
        container,
        &known,
        label,
        "container.",
        "service.unknown-key",
        out,
    );
    spec.entrypoint = match container.get("entrypoint") {
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
            Some(scalar_or_type(v)).filter(|s| !s.is_empty())
        }
        Some(v @ (Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_))) => {
            out.push(type_finding(label, "container.entrypoint", v, "a string"));
            None
        }
        _ => None,
    };
    if spec.entrypoint.is_none() {
        out.push(Finding::error(
            label,
            "service.entrypoint",
            "container entrypoint can't be empty",
            "set container.entrypoint to the program inside the container rootfs (./prog)",
        ));
    }
    string_list(container.get("args"), label, "container.args", out);
    let env = string_list(
        container.get("environment"),
        label,
        "container.environment",
        out,
    );
    for item in &env {
        if !item.contains('=') {
            out.push(Finding::warning(
                label,
                "service.environment",
                format!("environment entry {item:?} has no `=`"),
                "write environment entries as KEY=VALUE",
            ));
        }
    }
    spec.path_env = env
        .iter()
        .filter_map(|e| e.strip_prefix("PATH="))
        .next_back()
        .map(String::from);
    if let Some(v) = container.get("environmentFile").filter(|v| !v.is_null()) {
        if !matches!(v, Value::String(_)) {
            out.push(type_finding(
                label,
                "container.environmentFile",
                v,
                "a string",
            ));
        }
        out.push(Finding::warning(
            label,
            "service.deprecated",
            "container.environmentFile is deprecated; the service waits until the file exists",
            "use ExtensionServiceConfig environment in the machine configuration",
        ));
    }
    spec.mounts = check_mounts(container.get("mounts"), label, out);
    check_security(container.get("security"), label, out);
}

/// A list of scalars; reports anything else. Returns the items as text.
fn string_list(
    value: Option<&Value>,
    label: &str,
    field: &str,
    out: &mut Vec<Finding>,
) -> Vec<String> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => {
            let mut texts = Vec::new();
            for item in items {
                match item {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                        texts.push(scalar_or_type(item))
                    }
                    other => out.push(type_finding(
                        label,
                        &format!("{field}[]"),
                        other,
                        "a string",
                    )),
                }
            }
            texts
        }
        Some(other) => {
            out.push(type_finding(label, field, other, "a list of strings"));
            Vec::new()
        }
    }
}

fn expect_bool(value: Option<&Value>, label: &str, field: &str, out: &mut Vec<Finding>) {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(other) => out.push(type_finding(label, field, other, "true or false")),
    }
}

fn type_finding(label: &str, field: &str, v: &Value, want: &str) -> Finding {
    Finding::error(
        label,
        "service.type",
        format!(
            "{field} is {}, not {want}: Talos cannot decode the spec and skips the service",
            type_name(v)
        ),
        format!("write {field} as {want}"),
    )
}

fn check_mounts(
    value: Option<&Value>,
    label: &str,
    out: &mut Vec<Finding>,
) -> Vec<(String, String)> {
    let items = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            out.push(type_finding(
                label,
                "container.mounts",
                other,
                "a list of mounts",
            ));
            return Vec::new();
        }
    };
    let mut mounts = Vec::new();
    let mut seen: Vec<(String, Value)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Mapping(m) = item else {
            out.push(type_finding(
                label,
                &format!("container.mounts[{i}]"),
                item,
                "a mapping",
            ));
            continue;
        };
        let field = format!("container.mounts[{i}]");
        let (source, destination) = check_mount(m, label, &field, out);
        if let Some(dest) = destination.clone() {
            duplicate_mount(&mut seen, dest, item, label, &field, out);
        }
        if let (Some(s), Some(d)) = (source, destination) {
            mounts.push((s, d));
        }
    }
    mounts
}

fn duplicate_mount(
    seen: &mut Vec<(String, Value)>,
    dest: String,
    item: &Value,
    label: &str,
    field: &str,
    out: &mut Vec<Finding>,
) {
    match seen.iter().find(|(d, _)| *d == dest) {
        Some((_, earlier)) if earlier == item => out.push(Finding::warning(
            label,
            "service.duplicate-mount",
            format!("{field} mounts {dest} exactly like an earlier entry (listed twice)"),
            "remove the duplicate entry",
        )),
        Some(_) => out.push(Finding::warning(
            label,
            "service.duplicate-mount",
            format!("{field} mounts over {dest} again; the later mount hides the earlier one"),
            "keep one mount per destination",
        )),
        None => seen.push((dest, item.clone())),
    }
}

/// Checks one OCI mount; returns its source and destination when they are strings.
fn check_mount(
    m: &Mapping,
    label: &str,
    field: &str,
    out: &mut Vec<Finding>,
) -> (Option<String>, Option<String>) {
    let known = [
        "destination",
        "type",
        "source",
        "options",
        "uidMappings",
        "gidMappings",
    ];
    unknown_keys(
        m,
        &known,
        label,
        &format!("{field}."),
        "service.unknown-key",
        out,
    );
    let text = |k: &str| m.get(k).filter(|v| !v.is_null()).map(scalar_or_type);
    let destination = text("destination");
    match &destination {
        Some(d) if d.starts_with('/') => {}
        Some(d) => out.push(mount_error(
            label,
            format!("{field}.destination {d:?} is not absolute"),
        )),
        None => out.push(mount_error(label, format!("{field} has no destination"))),
    }
    let options = string_list(m.get("options"), label, &format!("{field}.options"), out);
    check_mount_options(&options, label, field, out);
    let is_bind = options.iter().any(|o| o == "bind" || o == "rbind");
    let kind = text("type");
    match kind.as_deref() {
        Some(t) if MOUNT_TYPES.contains(&t) => {}
        Some(t) => out.push(Finding::warning(
            label,
            "service.mount",
            format!("{field}.type {t:?} is not a mount type runc knows"),
            format!("use one of {}", MOUNT_TYPES.join(", ")),
        )),
        None if is_bind => {}
        None => out.push(Finding::warning(
            label,
            "service.mount",
            format!("{field} has neither a type nor a bind option"),
            "add `type: bind` (and options bind or rbind)",
        )),
    }
    let bind = is_bind || matches!(kind.as_deref(), Some("bind" | "rbind"));
    let source = text("source");
    match (&source, bind) {
        (Some(s), true) if !s.starts_with('/') => out.push(mount_error(
            label,
            format!("{field}.source {s:?} of a bind mount is not absolute"),
        )),
        (None, true) => out.push(mount_error(
            label,
            format!("{field} is a bind mount without source"),
        )),
        _ => {}
    }
    (source, destination)
}

fn mount_error(label: &str, message: String) -> Finding {
    Finding::error(
        label,
        "service.mount",
        message,
        "write mounts as OCI mounts: source and destination absolute, type bind, options",
    )
}

fn check_mount_options(options: &[String], label: &str, field: &str, out: &mut Vec<Finding>) {
    for o in options {
        if !o.contains('=') && !MOUNT_OPTIONS.contains(&o.as_str()) {
            out.push(Finding::warning(
                label,
                "service.mount-option",
                format!("{field}.options has unknown option {o:?}; runc refuses unknown flags"),
                "use bind, rbind, ro, rw, rshared, rslave, rprivate, nosuid, nodev, noexec, ...",
            ));
        }
    }
    if options.iter().any(|o| o == "ro") && options.iter().any(|o| o == "rw") {
        out.push(Finding::warning(
            label,
            "service.mount-option",
            format!("{field}.options has both ro and rw; the last one wins"),
            "keep only one of ro and rw",
        ));
    }
}

fn check_security(value: Option<&Value>, label: &str, out: &mut Vec<Finding>) {
    let security = match value {
        None | Some(Value::Null) => return,
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            out.push(type_finding(
                label,
                "container.security",
                other,
                "a mapping",
            ));
            return;
        }
    };
    let known = [
        "writeableRootfs",
        "writeableSysfs",
        "maskedPaths",
        "readonlyPaths",
        "rootfsPropagation",
    ];
    unknown_keys(
        security,
        &known,
        label,
        "container.security.",
        "service.unknown-key",
        out,
    );
    expect_bool(
        security.get("writeableRootfs"),
        label,
        "container.security.writeableRootfs",
        out,
    );
    expect_bool(
        security.get("writeableSysfs"),
        label,
        "container.security.writeableSysfs",
        out,
    );
    for key in ["maskedPaths", "readonlyPaths"] {
        let field = format!("container.security.{key}");
        for p in string_list(security.get(key), label, &field, out) {
            if !p.starts_with('/') {
                out.push(Finding::error(
                    label,
                    "service.security",
                    format!("{field} entry {p:?} is not absolute"),
                    "list absolute paths inside the container",
                ));
            }
        }
    }
    match security.get("rootfsPropagation") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() || PROPAGATIONS.contains(&s.as_str()) => {}
        Some(Value::String(s)) => out.push(Finding::error(
            label,
            "service.security",
            format!("container.security.rootfsPropagation {s:?} is not a propagation mode"),
            format!("use one of {}", PROPAGATIONS.join(", ")),
        )),
        Some(other) => out.push(type_finding(
            label,
            "container.security.rootfsPropagation",
            other,
            "a string",
        )),
    }
}

fn check_depends(value: Option<&Value>, label: &str, own_name: &str, out: &mut Vec<Finding>) {
    let items = match value {
        None | Some(Value::Null) => return,
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            out.push(type_finding(label, "depends", other, "a list"));
            return;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let field = format!("depends[{i}]");
        match item {
            Value::Mapping(m) => check_dependency(m, label, &field, own_name, out),
            other => out.push(type_finding(label, &field, other, "a mapping")),
        }
    }
}

fn check_dependency(m: &Mapping, label: &str, field: &str, own: &str, out: &mut Vec<Finding>) {
    let known = ["service", "path", "network", "time", "configuration"];
    unknown_keys(
        m,
        &known,
        label,
        &format!("{field}."),
        "service.unknown-key",
        out,
    );
    let mut kinds = Vec::new();
    if let Some(s) = m
        .get("service")
        .filter(|v| !v.is_null())
        .map(scalar_or_type)
    {
        if !s.is_empty() {
            kinds.push("service");
        }
        if !own.is_empty() && s == format!("ext-{own}") {
            out.push(dep_error(
                label,
                format!("{field} makes the service wait for itself ({s})"),
            ));
        }
    }
    if let Some(p) = m.get("path").filter(|v| !v.is_null()).map(scalar_or_type) {
        if !p.is_empty() {
            kinds.push("path");
            if !p.starts_with('/') {
                out.push(dep_error(
                    label,
                    format!("{field}: path is not absolute: {p:?}"),
                ));
            }
        }
    }
    let network = string_list(m.get("network"), label, &format!("{field}.network"), out);
    if !network.is_empty() {
        kinds.push("network");
    }
    for state in network
        .iter()
        .filter(|s| !NETWORK_STATES.contains(&s.as_str()))
    {
        out.push(dep_error(
            label,
            format!("{field}: invalid network dependency: {state}"),
        ));
    }
    for key in ["time", "configuration"] {
        expect_bool(m.get(key), label, &format!("{field}.{key}"), out);
        if m.get(key) == Some(&Value::Bool(true)) {
            kinds.push(key);
        }
    }
    match kinds.len() {
        0 => out.push(dep_error(
            label,
            format!("{field}: no dependency specified"),
        )),
        1 => {}
        _ => out.push(dep_error(
            label,
            format!(
                "{field}: more than a single dependency is set ({})",
                kinds.join(", ")
            ),
        )),
    }
}

fn dep_error(label: &str, message: String) -> Finding {
    Finding::error(
        label,
        "service.depends",
        message,
        "give each depends item exactly one of service, path (absolute), network \
         (addresses|connectivity|hostname|etcfiles), time: true, configuration: true",
    )
}

fn check_restart(value: Option<&Value>, label: &str, out: &mut Vec<Finding>) {
    let text = value.filter(|v| !v.is_null()).map(scalar_or_type);
    let Some(text) = text else {
        out.push(Finding::error(
            label,
            "service.restart",
            "restart is missing: Talos requires it and skips the service",
            "add `restart: always`, `never` or `untilSuccess`",
        ));
        return;
    };
    match RESTART_KINDS.iter().find(|k| k.eq_ignore_ascii_case(&text)) {
        Some(k) if **k == text => {}
        Some(k) => out.push(Finding::warning(
            label,
            "service.restart",
            format!("restart {text:?} is accepted (case is ignored) but is spelled {k:?}"),
            format!("write `restart: {k}`"),
        )),
        None => out.push(Finding::error(
            label,
            "service.restart",
            format!("restart kind is invalid: {text}"),
            "use always, never or untilSuccess",
        )),
    }
}

/// Checks that the container rootfs and the entrypoint of `spec` are shipped in `rootfs`.
///
/// The entrypoint is resolved like runc does: a path with `/` relative to the container root
/// (`./x` → `/x`), a bare name searched in the container's `PATH`; a path below a mount
/// destination is looked up at the mount's source on the host instead.
pub fn check_entrypoint(spec: &ServiceSpec, label: &str, rootfs: &Tree) -> Vec<Finding> {
    let Some(entrypoint) = spec.entrypoint.as_deref() else {
        return Vec::new();
    };
    let root = format!("{CONTAINERS_ROOT}/{}", spec.name);
    if !rootfs.get(&root).is_some_and(|e| e.is_dir()) {
        return vec![Finding::error(
            label,
            "service.container-rootfs",
            format!(
                "service {:?} has no container rootfs: Talos runs it from {root}, which the \
                 extension does not ship",
                spec.name
            ),
            format!("ship the service's files under rootfs{root}/"),
        )];
    }
    let candidates: Vec<String> = if entrypoint.contains('/') {
        vec![clean_join("/", entrypoint)]
    } else {
        let path = spec.path_env.as_deref().unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| clean_join(d, entrypoint))
            .collect()
    };
    let mut via_host_mount = None;
    for candidate in &candidates {
        match resolve(candidate, spec, &root) {
            Resolved::Host(host) if rootfs.get(&host).is_none() => {
                via_host_mount.get_or_insert(host);
            }
            Resolved::Host(found) | Resolved::Container(found) => {
                if let Some(entry) = rootfs.get(&found) {
                    return executable_findings(label, entrypoint, &found, &entry.kind, entry.mode);
                }
            }
        }
    }
    if let Some(host) = via_host_mount {
        return vec![Finding::warning(
            label,
            "service.entrypoint",
            format!(
                "entrypoint {entrypoint:?} resolves through a mount to host path {host}, \
                 which this extension does not ship; the base image must provide it"
            ),
            "ship the program in the extension or check the base image has it",
        )];
    }
    vec![Finding::error(
        label,
        "service.entrypoint",
        format!(
            "entrypoint {entrypoint:?} is not in the container rootfs {root} (looked for {})",
            candidates
                .iter()
                .map(|c| format!("{root}{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("ship the program under rootfs{root}/ or fix container.entrypoint"),
    )]
}

/// Where a path inside the container lives in the extension's rootfs.
enum Resolved {
    /// Below a bind mount: the host path.
    Host(String),
    /// In the container rootfs.
    Container(String),
}

fn resolve(path: &str, spec: &ServiceSpec, root: &str) -> Resolved {
    let mount = spec
        .mounts
        .iter()
        .filter(|(_, dest)| under(path, dest))
        .max_by_key(|(_, dest)| dest.len());
    match mount {
        Some((source, dest)) => {
            let rest = &path[dest.trim_end_matches('/').len()..];
            Resolved::Host(clean_join("/", &format!("{source}{rest}")))
        }
        None => Resolved::Container(format!("{root}{path}")),
    }
}

fn executable_findings(
    label: &str,
    entrypoint: &str,
    found: &str,
    kind: &EntryKind,
    mode: u32,
) -> Vec<Finding> {
    let problem = match kind {
        EntryKind::Dir => "is a directory",
        EntryKind::File(_) if mode & 0o111 == 0 => "is not executable",
        EntryKind::File(_) | EntryKind::Symlink(_) => return Vec::new(),
        _ => "is a special file",
    };
    vec![Finding::error(
        label,
        "service.entrypoint",
        format!("entrypoint {entrypoint:?} resolves to rootfs{found}, which {problem}"),
        "point container.entrypoint at an executable file (chmod +x)",
    )]
}

/// Joins `rel` onto `base` and normalises `.` and `..` (clamped at `/`).
fn clean_join(base: &str, rel: &str) -> String {
    let joined = if rel.starts_with('/') {
        rel.to_string()
    } else {
        format!("{base}/{rel}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(&joined).components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.to_str().unwrap_or("")),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::Entry;

    const HELLO: &str = "name: hello\ncontainer:\n  entrypoint: ./hello\n  mounts:\n    - source: /var/lib/example\n      destination: /var/lib/example\n      type: bind\n      options: [rbind, ro]\ndepends:\n  - service: cri\n  - path: /system/run/machined/machined.sock\n  - network: [addresses]\nrestart: never\n";

    fn file(name: &str, text: &str) -> ServiceFile {
        ServiceFile {
            label: name.to_string(),
            file_name: name.to_string(),
            text: text.to_string(),
        }
    }

    fn rules_of(text: &str) -> Vec<(&'static str, bool, String)> {
        check_service(&file("hello.yaml", text))
            .1
            .into_iter()
            .map(|f| (f.rule, f.is_error(), f.message))
            .collect()
    }

    #[test]
    fn a_good_spec_passes_and_is_read() {
        let (spec, out) = check_service(&file("hello.yaml", HELLO));
        assert!(out.is_empty(), "{out:#?}");
        let spec = spec.unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.entrypoint.as_deref(), Some("./hello"));
        assert_eq!(
            spec.mounts,
            [("/var/lib/example".into(), "/var/lib/example".into())]
        );
    }

    #[test]
    fn schema_violations_are_reported_with_their_severity() {
        let cases: &[(&str, &str, &str, bool, &str)] = &[
            (
                "name: hello",
                "name: Hello",
                "service.name",
                true,
                "\"Hello\" is invalid",
            ),
            (
                "name: hello\n",
                "",
                "service.name",
                true,
                "name \"\" is invalid",
            ),
            (
                "  entrypoint: ./hello\n",
                "",
                "service.entrypoint",
                true,
                "can't be empty",
            ),
            (
                "restart: never",
                "restart: sometimes",
                "service.restart",
                true,
                "invalid: sometimes",
            ),
            (
                "restart: never\n",
                "",
                "service.restart",
                true,
                "restart is missing",
            ),
            (
                "restart: never",
                "restart: Never",
                "service.restart",
                false,
                "spelled \"never\"",
            ),
            (
                "  - service: cri\n",
                "  - service: cri\n    time: true\n",
                "service.depends",
                true,
                "more than a single dependency is set (service, time)",
            ),
            (
                "  - service: cri\n",
                "  - time: false\n",
                "service.depends",
                true,
                "no dependency specified",
            ),
            (
                "path: /system",
                "path: system",
                "service.depends",
                true,
                "path is not absolute",
            ),
            (
                "[addresses]",
                "[addresses, online]",
                "service.depends",
                true,
                "invalid network dependency: online",
            ),
            (
                "  - service: cri\n",
                "  - service: ext-hello\n",
                "service.depends",
                true,
                "wait for itself",
            ),
            (
                "options: [rbind, ro]",
                "options: [rbind, ro, rw]",
                "service.mount-option",
                false,
                "both ro and rw",
            ),
            (
                "options: [rbind, ro]",
                "options: [rbind, readonly]",
                "service.mount-option",
                false,
                "\"readonly\"",
            ),
            (
                "destination: /var/lib/example",
                "destination: var",
                "service.mount",
                true,
                "not absolute",
            ),
            (
                "type: bind",
                "type: bindfs",
                "service.mount",
                false,
                "\"bindfs\"",
            ),
            (
                "restart: never",
                "restart: never\nmounts: []",
                "service.misplaced-mounts",
                false,
                "silently ignored",
            ),
            (
                "restart: never",
                "restart: never\nrestartDelay: 5",
                "service.unknown-key",
                false,
                "`restartDelay`",
            ),
            (
                "  entrypoint: ./hello\n",
                "  entrypoint: ./hello\n  args: ok\n",
                "service.type",
                true,
                "container.args is string",
            ),
            (
                "  entrypoint: ./hello\n",
                "  entrypoint: ./hello\n  security:\n    writeableRootfs: yes\n",
                "service.type",
                true,
                "writeableRootfs is string",
            ),
            (
                "  entrypoint: ./hello\n",
                "  entrypoint: ./hello\n  environment: [FOO]\n",
                "service.environment",
                false,
                "\"FOO\" has no `=`",
            ),
            (
                "  entrypoint: ./hello\n",
                "  entrypoint: \"{{ .BIN }}\"\n",
                "service.template-placeholder",
                true,
                "{{ .BIN }}",
            ),
            (
                "name: hello",
                "name: other",
                "service.file-name",
                false,
                "file \"hello.yaml\" holds service \"other\"",
            ),
        ];
        for (from, to, rule, error, message) in cases {
            let text = HELLO.replacen(from, to, 1);
            assert_ne!(text, HELLO, "{from} not in HELLO");
            let got = rules_of(&text);
            assert!(
                got.iter()
                    .any(|(r, e, m)| r == rule && e == error && m.contains(message)),
                "{rule} ({error}) `{message}` not in {got:#?}\n{text}"
            );
        }
    }

    #[test]
    fn duplicate_mounts_are_told_apart() {
        let mount = "    - source: /usr/local/lib\n      destination: /usr/local/lib\n      type: bind\n      options: [bind, ro]\n";
        let twice = HELLO.replace("  mounts:\n", &format!("  mounts:\n{mount}{mount}"));
        let got = rules_of(&twice);
        assert!(
            got.iter()
                .any(|(r, _, m)| *r == "service.duplicate-mount" && m.contains("listed twice")),
            "{got:?}"
        );
        let other = HELLO.replace(
            "  mounts:\n",
            &format!(
                "  mounts:\n{mount}{}",
                mount.replace("source: /usr/local/lib", "source: /opt")
            ),
        );
        let got = rules_of(&other);
        assert!(got.iter().any(|(r, _, m)| *r == "service.duplicate-mount" && m.contains("hides the earlier")), "{got:?}");
    }

    #[test]
    fn machine_config_documents_are_not_services() {
        let text = "---\napiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: foo\n";
        let (spec, out) = check_service(&file("x.yaml", text));
        assert!(spec.is_none());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, "service.not-a-service");
    }

    #[test]
    fn duplicate_names_keep_the_first_file_in_name_order() {
        let files = [
            file("b.yaml", &HELLO.replace("name: hello", "name: x")),
            file("a.yaml", &HELLO.replace("name: hello", "name: x")),
        ];
        let out = check_services(&files, None);
        let dup: Vec<&Finding> = out
            .iter()
            .filter(|f| f.rule == "service.duplicate-name")
            .collect();
        assert_eq!(dup.len(), 1);
        assert_eq!(dup[0].path, "b.yaml");
        assert!(dup[0].message.contains("already used by a.yaml"));
    }

    #[test]
    fn entrypoints_resolve_in_the_container_or_through_mounts() {
        let mut t = Tree::new();
        t.insert(
            "/usr/local/lib/containers/hello/hello",
            Entry::bytes_file("x", 0o755),
        )
        .unwrap();
        t.insert(
            "/usr/local/lib/containers/hello/usr/bin/tool",
            Entry::bytes_file("x", 0o644),
        )
        .unwrap();
        t.insert(
            "/usr/local/lib/containers/hello/bin/sh",
            Entry::bytes_file("x", 0o755),
        )
        .unwrap();
        t.insert("/usr/local/bin/wrapper", Entry::bytes_file("x", 0o755))
            .unwrap();
        let spec = |ep: &str| ServiceSpec {
            name: "hello".into(),
            entrypoint: Some(ep.into()),
            mounts: vec![
                ("/usr/local/bin".into(), "/usr/local/bin".into()),
                ("/lib".into(), "/lib".into()),
            ],
            path_env: None,
        };
        let check = |ep: &str| -> Vec<(bool, String)> {
            check_entrypoint(&spec(ep), "hello.yaml", &t)
                .into_iter()
                .map(|f| (f.is_error(), f.message))
                .collect()
        };
        assert!(check("./hello").is_empty());
        assert!(check("/hello").is_empty());
        assert!(check("sh").is_empty(), "bare names are searched in PATH");
        assert!(
            check("/usr/local/bin/wrapper").is_empty(),
            "found through the mount"
        );
        let e = check("/usr/bin/tool");
        assert!(e[0].0 && e[0].1.contains("is not executable"), "{e:?}");
        let e = check("./missing");
        assert!(
            e[0].0 && e[0].1.contains("/usr/local/lib/containers/hello/missing"),
            "{e:?}"
        );
        let w = check("/lib/ld-musl.so");
        assert!(
            !w[0].0 && w[0].1.contains("host path /lib/ld-musl.so"),
            "{w:?}"
        );
        let mut other = spec("./x");
        other.name = "nope".into();
        let e = check_entrypoint(&other, "n.yaml", &t);
        assert_eq!(e[0].rule, "service.container-rootfs");
    }

    #[test]
    fn clean_join_normalises() {
        assert_eq!(clean_join("/", "./x"), "/x");
        assert_eq!(clean_join("/a/b", "../c"), "/a/c");
        assert_eq!(clean_join("/a", "/../../etc"), "/etc");
    }
}
