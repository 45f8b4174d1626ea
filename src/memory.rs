//! How the process asks the system for memory.
//!
//! The binaries allocate with mimalloc (`src/main.rs`). By default it asks the kernel to back
//! its arenas with transparent huge pages, and the kernel keeps a 2 MiB page whole while any
//! byte of it is in use: a gateway holds many small long-lived objects (a connection is a few
//! KiB) among many short-lived ones, so its memory stays near its high-water mark, in 2 MiB
//! steps. Measured with `loadtest` (docs/benchmark-history.md, "Memory per connection since
//! the previous run"), huge pages held about 1.6 KiB more per idle connection and 11 MiB more
//! at rest, and after a connection storm they kept anywhere from 1.6 to 17 MiB (2.6 to 3.9 MiB
//! without); the CPU they save on TLB misses was within the runs' spread. mimalloc is built
//! without its
//! huge-page advice (the `no_thp` feature), and [`no_huge_pages`] turns them off for the
//! process, for systems whose setting gives them to every mapping (`always`).

/// Turns transparent huge pages off for this process (and the processes it starts, such as
/// local mode's PostgreSQL). Called first thing in `main`, before the heap grows. An error (a
/// kernel without the setting) leaves things as they are: more memory, nothing worse.
///
/// # Errors
/// When the kernel refuses the setting.
pub fn no_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_thp_disable(true)?;
    Ok(())
}
