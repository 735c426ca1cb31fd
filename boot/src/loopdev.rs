//! Attaching a squashfs file to a loop device, without `losetup`.
//!
//! Steps: ask `/dev/loop-control` for a free device (`LOOP_CTL_GET_FREE`),
//! open `/dev/loop<N>` (creating the node if devtmpfs has not), and bind the
//! file to it read-only with autoclear in one `LOOP_CONFIGURE` call; kernels
//! before 5.8 lack that call, so `EINVAL`/`ENOTTY` falls back to
//! `LOOP_SET_FD` + `LOOP_SET_STATUS64`. Autoclear detaches the device once
//! its last user (our fd, then the mount) lets go, so a failed mount leaks
//! nothing. A device taken by someone else between the two steps (`EBUSY`)
//! is retried with the next free one.
//! Not supported: offsets, size limits, partition scanning, direct I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys::{check, cpath};

/// The loop control device.
pub const LOOP_CONTROL: &str = "/dev/loop-control";

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LOOP_MAJOR: libc::c_uint = 7;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
/// How many free devices to try when others race us for them.
const ATTEMPTS: usize = 8;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every free device was taken before we could use it.
    #[error("every free loop device was busy ({ATTEMPTS} tries) for {file}")]
    Busy {
        /// The backing file.
        file: PathBuf,
    },
    /// Binding the file to the device failed.
    #[error("cannot attach {file} to {device}")]
    Configure {
        /// The backing file.
        file: PathBuf,
        /// The loop device.
        device: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// No free device could be had.
    #[error(
        "cannot get a free loop device from {LOOP_CONTROL} for {file}; is the loop module loaded?"
    )]
    GetFree {
        /// The backing file.
        file: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// A device node could not be opened or created.
    #[error("cannot open loop device {device}")]
    OpenDevice {
        /// The loop device.
        device: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// The backing file could not be opened.
    #[error("cannot open image {file}")]
    OpenFile {
        /// The backing file.
        file: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// A loop device bound to a file. Keep it until the device is mounted:
/// dropping it closes our handle, and with autoclear an unused device
/// detaches itself.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    _device: File,
}

impl LoopDevice {
    /// The device node, e.g. `/dev/loop0`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds `file` read-only to a free loop device.
pub fn attach_read_only(file: &Path) -> Result<LoopDevice, Error> {
    let backing = File::open(file).map_err(|source| Error::OpenFile {
        file: file.to_path_buf(),
        source,
    })?;
    let get_free_fail = |source| Error::GetFree {
        file: file.to_path_buf(),
        source,
    };
    let control = File::open(LOOP_CONTROL).map_err(get_free_fail)?;
    for _ in 0..ATTEMPTS {
        let number = get_free(&control).map_err(get_free_fail)?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = open_device(&path, number).map_err(|source| Error::OpenDevice {
            device: path.clone(),
            source,
        })?;
        match configure(&device, &backing, file) {
            Ok(()) => {
                return Ok(LoopDevice {
                    path,
                    _device: device,
                })
            }
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(source) => {
                return Err(Error::Configure {
                    file: file.to_path_buf(),
                    device: path,
                    source,
                })
            }
        }
    }
    Err(Error::Busy {
        file: file.to_path_buf(),
    })
}

fn get_free(control: &File) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
    let ret = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    check(ret).map(|n| n.unsigned_abs())
}

/// Opens the node, creating it when devtmpfs has not (yet).
fn open_device(path: &Path, number: u32) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
    };
    match open() {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let c_path = cpath(path)?;
            let dev = libc::makedev(LOOP_MAJOR, number);
            // SAFETY: the path is NUL-terminated and outlives the call.
            check(unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFBLK | 0o600, dev) })?;
            open()
        }
        other => other,
    }
}

/// The device's status: read-only, autoclear, and the file name (truncated,
/// as the kernel keeps only 63 bytes) for `/sys/block/loop<N>/loop/backing_file`.
fn loop_info(file: &Path) -> LoopInfo64 {
    let mut name = [0u8; LO_NAME_SIZE];
    let bytes = file.as_os_str().as_encoded_bytes();
    let len = bytes.len().min(LO_NAME_SIZE - 1);
    name[..len].copy_from_slice(&bytes[..len]);
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
        lo_file_name: name,
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; LO_KEY_SIZE],
        lo_init: [0; 2],
    }
}

fn configure(device: &File, backing: &File, file: &Path) -> io::Result<()> {
    let config = LoopConfig {
        fd: backing.as_raw_fd().unsigned_abs(),
        block_size: 0,
        info: loop_info(file),
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config`
    // is (repr(C), same layout) and which outlives the call.
    let ret = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &config as *const LoopConfig,
        )
    };
    match check(ret) {
        Ok(_) => Ok(()),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => {
            configure_legacy(device, backing, &config.info)
        }
        Err(err) => Err(err),
    }
}

/// The pre-5.8 way: bind (read-only because `backing` is), then set autoclear.
fn configure_legacy(device: &File, backing: &File, info: &LoopInfo64) -> io::Result<()> {
    // SAFETY: LOOP_SET_FD takes the backing fd as its integer argument.
    check(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_SET_FD as _,
            backing.as_raw_fd() as libc::c_ulong,
        )
    })?;
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64`, which `info`
    // is and which outlives the call.
    let ret = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_SET_STATUS64 as _,
            info as *const LoopInfo64,
        )
    };
    check(ret).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::error_chain;

    #[test]
    fn structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        assert_eq!(std::mem::offset_of!(LoopConfig, info), 8);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_file_name), 56);
    }

    #[test]
    fn status_is_read_only_autoclear_and_names_the_file() {
        let info = loop_info(Path::new("/rootfs.sqsh"));
        assert_eq!(info.lo_flags, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR);
        assert_eq!(&info.lo_file_name[..13], b"/rootfs.sqsh\0");
        let long = "/".repeat(100);
        let info = loop_info(Path::new(&long));
        assert_eq!(info.lo_file_name[LO_NAME_SIZE - 1], 0);
    }

    #[test]
    fn a_missing_image_is_named() {
        let err = attach_read_only(Path::new("/nonexistent/rootfs.sqsh")).unwrap_err();
        assert!(error_chain(&err).starts_with("cannot open image /nonexistent/rootfs.sqsh: "));
    }
}
