//! Tollgate's BPF programs. Build with the bpfel-unknown-none target and bpf-linker.
//!
//! NOTE: no program is written yet, so the daemon attributes no connection to a process.
#![no_std]
#![no_main]

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
