//! AFL++ entry point of the `dns_answer` target
//! ([`switchyard_fuzz::dns_answer`]): persistent mode, the target set up
//! once per forked process on its first input.

fn main() {
    // A panic aborts the process (the `fuzz!` hook): nothing is ever
    // observed after one, so unwind safety does not matter here.
    let mut run = std::panic::AssertUnwindSafe(None);
    afl::fuzz!(|data: &[u8]| {
        run.get_or_insert_with(|| switchyard_fuzz::start("dns_answer"))(data);
    });
}
