//! Guest-side checks for the real-kernel suite (tests/vm) that the `barkeep`
//! CLI cannot make precisely: the received fd's size, mapping past the slice,
//! SIGBUS after revoke, the buffer name in /proc/self/maps.

fn main() {
    eprintln!("bk-vmcheck: no checks yet");
    std::process::exit(2);
}
