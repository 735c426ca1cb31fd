//! The kind of an extension, as every side names it: the profile, the
//! build's `manifest.json`, `/etc/strata/extensions.json` in the initramfs
//! and the guest's report all spell it `talos`, `sysext` or `confext`.

use serde::{Deserialize, Serialize};

use crate::extrelease::Class;

/// What kind of image an extension is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtensionKind {
    /// A Talos extension (`manifest.yaml` + `rootfs/`), stacked over the root.
    Talos,
    /// A systemd system extension, merged on /usr and /opt.
    Sysext,
    /// A systemd configuration extension, merged on /etc.
    Confext,
}

impl ExtensionKind {
    /// Every kind, in the order the guest stacks them.
    pub const ALL: [ExtensionKind; 3] = [
        ExtensionKind::Talos,
        ExtensionKind::Sysext,
        ExtensionKind::Confext,
    ];

    /// The name as every file spells it: `talos`, `sysext`, `confext`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionKind::Talos => "talos",
            ExtensionKind::Sysext => "sysext",
            ExtensionKind::Confext => "confext",
        }
    }

    /// Reads the name [`ExtensionKind::as_str`] writes; `None` for anything else,
    /// so a reader can name the bad value instead of guessing a kind.
    pub fn parse(name: &str) -> Option<ExtensionKind> {
        ExtensionKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The systemd image class, for the kinds systemd merges; `None` for Talos.
    pub fn class(self) -> Option<Class> {
        match self {
            ExtensionKind::Talos => None,
            ExtensionKind::Sysext => Some(Class::Sysext),
            ExtensionKind::Confext => Some(Class::Confext),
        }
    }
}

impl std::fmt::Display for ExtensionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Class> for ExtensionKind {
    fn from(class: Class) -> ExtensionKind {
        match class {
            Class::Sysext => ExtensionKind::Sysext,
            Class::Confext => ExtensionKind::Confext,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_wire_form_and_parse_back() {
        for kind in ExtensionKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
            assert_eq!(ExtensionKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(ExtensionKind::parse("Talos"), None);
        assert_eq!(ExtensionKind::parse(""), None);
    }

    #[test]
    fn only_systemd_kinds_have_a_class() {
        assert_eq!(ExtensionKind::Talos.class(), None);
        for class in [Class::Sysext, Class::Confext] {
            assert_eq!(ExtensionKind::from(class).class(), Some(class));
        }
    }
}
