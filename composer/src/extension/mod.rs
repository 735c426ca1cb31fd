//! System extensions: reading them, checking them, and naming their layers.
//!
//! Supported now: Talos extensions given as a directory (`manifest.yaml` +
//! `rootfs/`). Each becomes one squashfs layer stacked over the root in
//! profile order, listed in `extensions.yaml` as Talos does.

pub mod arch;
pub mod findings;
pub mod modules;
pub mod pack;
pub mod source;
pub mod sysext;
pub mod talos;
pub mod validate;

pub use talos::TalosExtension;

/// The file name of layer `index` in the initramfs, e.g. `00-hello.sqsh`.
/// The index comes first so a plain sort keeps profile order.
pub fn layer_image_name(index: usize, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{index:02}-{safe}.sqsh")
}

#[cfg(test)]
mod tests {
    #[test]
    fn layer_names_sort_in_profile_order() {
        assert_eq!(
            super::layer_image_name(3, "nvidia/driver"),
            "03-nvidia_driver.sqsh"
        );
    }
}
